"""Sources: enumerate input items (files, folders, globs, in-memory arrays and texts); decode nothing.

Image models read image files. Text models read ``.txt`` files (a whole file is one item, or each non-empty
line one item with ``per_line``), ``.jsonl`` (one item per record, the text in field ``field``, default
``text``), ``.csv``/``.tsv`` (one item per row, the text in column ``field``), and literal strings wrapped
in :class:`Text` (a plain ``str`` is always a path, so a typo in a path never becomes the text labeled).
Records of ``.jsonl``/``.csv`` files and lines are read while enumerating, one at a time; a record that is
not JSON, holds a byte that is not UTF-8, or has an empty text fails alone (the rest of the file is read).

With ``unique=True`` (``label`` and project imports) a file reached twice (named twice, a folder plus a glob, a
folder inside another) is one item: files are compared by their resolved real path. A folder or glob that stands
for no file at all yields one failed entry that says so (``Item.matched`` False); :func:`check_some_items`
refuses, before any work, sources that stand for nothing at all.
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
    matched: bool = True  # False: the source (an empty folder, a glob matching nothing) stands for no file


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
NOTHING = "\x00nothing"  # the text of an entry that stands for no file (an empty folder, a glob matching none)


def _not_utf8(value: str) -> str | None:
    """Why ``value`` (read with ``errors="surrogateescape"``) is not UTF-8 text, or None when it is."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not UTF-8 text (byte 0x{ord(value[exc.start]) & 0xFF:02x} at character {exc.start + 1}); re-encode it"
    return None


def _empty_text(value: str) -> bool:
    return not value.strip()


def _records(path: Path, key: str, reading: TextReading) -> Iterator[_Expanded]:
    """One entry per line / record / row of a text file, read lazily; a bad record fails alone."""
    suffix = path.suffix.lower()
    try:
        handle = path.open(
            encoding="utf-8-sig", errors="surrogateescape", newline="" if suffix in (".csv", ".tsv") else None
        )
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
            if _not_utf8(",".join(columns)):
                yield str(path), key, None, f"the header of {path} is {_not_utf8(','.join(columns))}", None
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
                if value is None:
                    error = f"row {row_number} has no value in column {reading.field!r}"
                elif _not_utf8(value):
                    error, value = f"row {row_number}: {reading.field!r} is {_not_utf8(value)}", None
                elif _empty_text(value):
                    error, value = f"row {row_number}: the text in column {reading.field!r} is empty", None
                else:
                    error = None
                yield f"{path}:{row_number}", f"{key}:{row_number}", None, error, value
            return
        try:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where, line_key = f"{path}:{number}", f"{key}:{number}"
                bad = _not_utf8(line)
                if bad:
                    yield where, line_key, None, f"line {number} is {bad}", None
                    continue
                if suffix == ".txt":
                    yield where, line_key, None, None, line.rstrip("\r\n")
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"{path}:{number}", f"{key}:{number}", None, f"line {number} is not JSON: {exc}", None
                    continue
                value = record.get(reading.field) if isinstance(record, dict) else None
                if not isinstance(value, str):
                    error = f"line {number} has no string field {reading.field!r}; name it with --text-field"
                    yield where, line_key, None, error, None
                elif _empty_text(value):
                    yield where, line_key, None, f"line {number}: the text in field {reading.field!r} is empty", None
                else:
                    yield where, line_key, None, None, value
        except OSError as exc:
            yield str(path), key, None, f"cannot read {path}: {exc.strerror or exc}", None


def _expand_file(path: Path, key: str, media: str, reading: TextReading) -> Iterator[_Expanded]:
    if media == "text" and (path.suffix.lower() in (".jsonl", ".csv", ".tsv") or reading.per_line):
        yield from _records(path, key, reading)
    else:
        yield str(path), key, None, None, None


def _expand(source: Source, media: str, reading: TextReading, seen: set[str] | None = None) -> Iterator[_Expanded]:
    """(source, key, array, error, text) for every item one source stands for; files whose real path is in
    ``seen`` are left out (and added to it) when ``seen`` is given."""

    def fresh(file: Path) -> bool:
        if seen is None:
            return True
        real = os.path.realpath(file)
        if real in seen:
            return False
        seen.add(real)
        return True

    if isinstance(source, np.ndarray):
        yield "<array>", "array.png", source, None, None
        return
    if isinstance(source, Text):
        empty = "the text is empty" if _empty_text(source) else None
        yield "<text>", "text", None, empty, None if empty else str(source)
        return
    if not isinstance(source, (str, os.PathLike)):
        raise UnsupportedInputError(_not_a_source(source))
    text = os.fspath(source)
    path = Path(text).expanduser()
    suffixes = IMAGE_SUFFIXES if media == "image" else READABLE_TEXT_SUFFIXES
    kinds = "image files" if media == "image" else "text files (.txt, .jsonl, .csv, .tsv)"
    if path.is_dir():
        found = False
        for file in _walk(path, suffixes):
            found = True
            if fresh(file):
                yield from _expand_file(file, file.relative_to(path).as_posix(), media, reading)
        if not found:
            yield NOTHING, path.name or text, None, f"no {kinds} in {text} (searched recursively)", None
    elif path.exists():
        if fresh(path):
            yield from _expand_file(path, path.name, media, reading)
    elif GLOB_CHARS & set(text):
        root = _glob_root(text)
        matches = sorted(glob.iglob(os.path.expanduser(text), recursive=True))
        files = [m for m in matches if Path(m).is_file()]
        if not files:
            yield NOTHING, Path(text).name, None, f"no {kinds} match {text!r}", None
        for match in files:
            file = Path(match)
            if not fresh(file):
                continue
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
    sources: Source | Iterable[Source],
    media: str = "image",
    reading: TextReading | None = None,
    unique: bool = False,
) -> Iterator[Item]:
    """Every item the sources stand for, numbered from 0 in order; keys are made unique.

    ``media`` (``image`` or ``text``) says which files a folder or glob contributes and how text files split.
    ``unique``: a file reached twice (same real path) is one item, the first time it is reached (``label`` and
    imports); without it every source given is an item (``Engine.predict``: one prediction per input).
    """
    reading = reading or TextReading()
    seen: set[str] = set()
    files: set[str] | None = set() if unique else None
    index = 0
    for source in _normalise(sources):
        for text, key, array, error, content in _expand(source, media, reading, files):
            matched = text != NOTHING
            if not matched:
                text = os.fspath(source)
            if array is not None:
                key = f"array_{index:06d}.png"
            elif text == "<text>":
                key = f"text_{index:06d}"
                text = f"<text {index}>"
            unique_key, n = key, 1
            while unique_key in seen:
                stem, dot, suffix = key.rpartition(".")
                unique_key = f"{stem}_{n}.{suffix}" if dot else f"{key}_{n}"
                n += 1
            seen.add(unique_key)
            source_text = text if array is None else f"<array {index}>"
            yield Item(index, source_text, unique_key, array, error, content, matched)
            index += 1


def count_items(
    sources: Source | Iterable[Source], media: str = "image", reading: TextReading | None = None, unique: bool = False
) -> int:
    """How many items the sources stand for (walks folders; reads only files split into records)."""
    return sum(1 for _ in iter_items(sources, media, reading, unique))


def check_some_items(sources: Source | Iterable[Source], media: str, reading: TextReading | None = None) -> None:
    """Refuse, before any work (no model loaded), sources that stand for no file at all: empty folders and globs
    that match nothing give this one error (a missing path stays a failed item, as a failed read would).

    Stops at the first item found: a folder is walked only until its first file.
    """
    if isinstance(sources, (str, os.PathLike, np.ndarray)):
        sources = [sources]
    sources = list(sources)
    reasons = []
    for item in iter_items(sources, media, reading):
        if item.matched:
            return
        reasons.append(item.error)
    kinds = "image files" if media == "image" else ".txt/.jsonl/.csv/.tsv files or texts"
    raise UnsupportedInputError(
        f"no input items found in {', '.join(str(s) for s in sources) or 'no sources'}: "
        f"{'; '.join(r for r in reasons if r) or 'nothing given'}; give {kinds}, folders holding them, or globs that "
        "match them"
    )


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
