"""Sources: enumerate input items (files, folders, globs, in-memory arrays and texts); decode nothing.

Image models read image files. Text models read ``.txt`` files (a whole file is one item, or each non-empty
line one item with ``per_line``), ``.jsonl`` (one item per record, the text in field ``field``, default
``text``), ``.csv``/``.tsv`` (one item per row, the text in column ``field``), and literal strings wrapped
in :class:`Text` (a plain ``str`` is always a path, so a typo in a path never becomes the text labeled).
Records of ``.jsonl``/``.csv`` files and lines are read while enumerating, one at a time.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from avala_infer.errors import UnsupportedInputError
from avala_infer.types import Text

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pbm", ".pgm", ".ppm", ".pfm"}
)
TEXT_SUFFIXES = frozenset({".txt", ".jsonl", ".csv", ".json", ".tsv"})
READABLE_TEXT_SUFFIXES = (".txt", ".jsonl", ".csv", ".tsv")
GLOB_CHARS = frozenset("*?[")


Source = str | os.PathLike | np.ndarray


@dataclasses.dataclass(frozen=True)
class TextReading:
    """How text files become items: ``per_line`` splits ``.txt`` files into one item per non-empty line;
    ``field`` names the JSONL field or CSV/TSV column holding the text (default ``text``)."""

    per_line: bool = False
    field: str = "text"


@dataclasses.dataclass(frozen=True)
class Item:
    """One input: a path (or an in-memory BGR array), its output key, or why it cannot be read at all."""

    index: int
    source: str
    key: str
    array: np.ndarray | None = None
    error: str | None = None
    text: str | None = None  # the text itself, for literal texts and records read while enumerating


def _normalise(sources: Source | Iterable[Source]) -> Iterable[Source]:
    if isinstance(sources, (str, os.PathLike, np.ndarray)):  # Text is a str
        return [sources]
    if not isinstance(sources, Iterable):
        raise UnsupportedInputError(_not_a_source(sources))
    return sources


def _not_a_source(source: object) -> str:
    return (
        f"cannot read {source!r} ({type(source).__name__}): give file or folder paths, globs, image arrays, or "
        "avala_infer.Text('...') for a literal text"
    )


def _walk(root: Path, suffixes: frozenset[str] | tuple[str, ...]) -> Iterator[Path]:
    """Files with one of ``suffixes`` under ``root``, recursively, in sorted order, one folder at a time."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in suffixes:
                yield Path(folder) / name


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next((i for i, p in enumerate(parts) if GLOB_CHARS & set(p)), len(parts))]]
    return Path(*fixed) if fixed else Path(".")


_Expanded = tuple[str, str, "np.ndarray | None", "str | None", "str | None"]  # source, key, array, error, text


def _records(path: Path, key: str, reading: TextReading) -> Iterator[_Expanded]:
    """One entry per line / record / row of a text file, read lazily; a bad record fails alone."""
    suffix = path.suffix.lower()
    try:
        handle = path.open(encoding="utf-8", newline="" if suffix in (".csv", ".tsv") else None)
    except OSError as exc:
        yield str(path), key, None, f"cannot read {path}: {exc.strerror or exc}", None
        return
    with handle:
        if suffix in (".csv", ".tsv"):
            rows = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            try:
                columns = rows.fieldnames or []
            except (csv.Error, UnicodeDecodeError) as exc:
                yield str(path), key, None, f"cannot read {path} as {suffix[1:].upper()}: {exc}", None
                return
            if reading.field not in columns:
                yield (
                    str(path),
                    key,
                    None,
                    (
                        f"{path} has no column {reading.field!r} (columns: {', '.join(columns) or 'none'}); "
                        "name the text column with --text-field / text_field="
                    ),
                    None,
                )
                return
            row_number = 1
            while True:
                try:
                    row = next(rows)
                except StopIteration:
                    return
                except (csv.Error, UnicodeDecodeError) as exc:
                    yield f"{path}:{row_number + 1}", f"{key}:{row_number + 1}", None, f"bad row: {exc}", None
                    return
                row_number = rows.line_num
                value = row.get(reading.field)
                error = None if value is not None else f"row has no value in column {reading.field!r}"
                yield f"{path}:{row_number}", f"{key}:{row_number}", None, error, value
            return
        try:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                if suffix == ".txt":
                    yield f"{path}:{number}", f"{key}:{number}", None, None, line.rstrip("\r\n")
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"{path}:{number}", f"{key}:{number}", None, f"line {number} is not JSON: {exc}", None
                    continue
                value = record.get(reading.field) if isinstance(record, dict) else None
                if not isinstance(value, str):
                    error = f"line {number} has no string field {reading.field!r}; name it with --text-field"
                    yield f"{path}:{number}", f"{key}:{number}", None, error, None
                else:
                    yield f"{path}:{number}", f"{key}:{number}", None, None, value
        except UnicodeDecodeError as exc:
            yield str(path), key, None, f"{path} is not UTF-8 text: {exc}", None


def _expand_file(path: Path, key: str, media: str, reading: TextReading) -> Iterator[_Expanded]:
    if media == "text" and (path.suffix.lower() in (".jsonl", ".csv", ".tsv") or reading.per_line):
        yield from _records(path, key, reading)
    else:
        yield str(path), key, None, None, None


def _expand(source: Source, media: str, reading: TextReading) -> Iterator[_Expanded]:
    """(source, key, array, error, text) for every item one source stands for."""
    if isinstance(source, np.ndarray):
        yield "<array>", "array.png", source, None, None
        return
    if isinstance(source, Text):
        yield "<text>", "text", None, None, str(source)
        return
    if not isinstance(source, (str, os.PathLike)):
        raise UnsupportedInputError(_not_a_source(source))
    text = os.fspath(source)
    path = Path(text).expanduser()
    suffixes = IMAGE_SUFFIXES if media == "image" else READABLE_TEXT_SUFFIXES
    if path.is_dir():
        for file in _walk(path, suffixes):
            yield from _expand_file(file, file.relative_to(path).as_posix(), media, reading)
    elif path.exists():
        yield from _expand_file(path, path.name, media, reading)
    elif GLOB_CHARS & set(text):
        root = _glob_root(text)
        matches = sorted(glob.iglob(os.path.expanduser(text), recursive=True))
        files = [m for m in matches if Path(m).is_file()]
        if not files:
            yield text, Path(text).name, None, f"no files match the pattern {text!r}", None
        for match in files:
            file = Path(match)
            try:
                key = file.relative_to(root).as_posix()
            except ValueError:
                key = file.name
            yield from _expand_file(file, key, media, reading)
    else:
        hint = ""
        if media == "text" and Path(text).suffix.lower() not in READABLE_TEXT_SUFFIXES:
            hint = " (to label a literal string, wrap it: avala_infer.Text('...'), or use --text on the CLI)"
        yield text, path.name or text, None, f"no such file or folder: {text}{hint}", None


def iter_items(
    sources: Source | Iterable[Source], media: str = "image", reading: TextReading | None = None
) -> Iterator[Item]:
    """Every item the sources stand for, numbered from 0 in order; keys are made unique.

    ``media`` (``image`` or ``text``) says which files a folder or glob contributes and how text files split.
    """
    reading = reading or TextReading()
    seen: set[str] = set()
    index = 0
    for source in _normalise(sources):
        for text, key, array, error, content in _expand(source, media, reading):
            if array is not None:
                key = f"array_{index:06d}.png"
            elif text == "<text>":
                key = f"text_{index:06d}"
                text = f"<text {index}>"
            unique, n = key, 1
            while unique in seen:
                stem, dot, suffix = key.rpartition(".")
                unique = f"{stem}_{n}.{suffix}" if dot else f"{key}_{n}"
                n += 1
            seen.add(unique)
            yield Item(index, text if array is None else f"<array {index}>", unique, array, error, content)
            index += 1


def count_items(sources: Source | Iterable[Source], media: str = "image", reading: TextReading | None = None) -> int:
    """How many items the sources stand for (walks folders; reads only files split into records)."""
    return sum(1 for _ in iter_items(sources, media, reading))


def check_sources_fit(sources: Source | Iterable[Source], media: str, model_name: str) -> None:
    """Refuse, before any work, files named directly whose kind the model cannot read."""
    for source in _normalise(sources):
        if not isinstance(source, (str, os.PathLike, np.ndarray)):
            raise UnsupportedInputError(_not_a_source(source))
        if media == "text":
            if isinstance(source, np.ndarray):
                raise UnsupportedInputError(f"model {model_name!r} reads text, but was given an image array")
            if not isinstance(source, Text):
                path = Path(os.fspath(source))
                if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                    raise UnsupportedInputError(
                        f"model {model_name!r} reads text, but {path} is an image; give it .txt/.jsonl/.csv/.tsv "
                        "files or folders, or pick an image model"
                    )
            continue
        if isinstance(source, Text):
            raise UnsupportedInputError(f"model {model_name!r} reads images, but was given a text string")
        if isinstance(source, np.ndarray):
            if source.ndim not in (2, 3) or source.dtype != np.uint8:
                raise UnsupportedInputError(
                    f"in-memory images must be uint8 HxW or HxWx3 BGR arrays, got {source.dtype} {source.shape}"
                )
            continue
        path = Path(os.fspath(source))
        if path.suffix.lower() in TEXT_SUFFIXES and path.is_file():
            raise UnsupportedInputError(
                f"model {model_name!r} reads images, but {path} is a text file; "
                "give it image files or folders, or pick a text model"
            )
