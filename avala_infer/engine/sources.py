"""Sources: enumerate input items (files, folders, globs, in-memory arrays); decode nothing."""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from avala_infer.errors import UnsupportedInputError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pbm", ".pgm", ".ppm", ".pfm"}
)
TEXT_SUFFIXES = frozenset({".txt", ".jsonl", ".csv", ".json", ".tsv"})
GLOB_CHARS = frozenset("*?[")

Source = str | os.PathLike | np.ndarray


@dataclasses.dataclass(frozen=True)
class Item:
    """One input: a path (or an in-memory BGR array), its output key, or why it cannot be read at all."""

    index: int
    source: str
    key: str
    array: np.ndarray | None = None
    error: str | None = None


def _normalise(sources: Source | Iterable[Source]) -> Iterable[Source]:
    if isinstance(sources, (str, os.PathLike, np.ndarray)):
        return [sources]
    return sources


def _walk_images(root: Path) -> Iterator[Path]:
    """Image files under ``root``, recursively, in sorted order, one folder listed at a time."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(folder) / name


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next((i for i, p in enumerate(parts) if GLOB_CHARS & set(p)), len(parts))]]
    return Path(*fixed) if fixed else Path(".")


def _expand(source: Source) -> Iterator[tuple[str, str, np.ndarray | None, str | None]]:
    """(source, key, array, error) for every item one source stands for."""
    if isinstance(source, np.ndarray):
        yield "<array>", "array.png", source, None
        return
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        for file in _walk_images(path):
            yield str(file), file.relative_to(path).as_posix(), None, None
    elif path.exists():
        yield str(path), path.name, None, None
    elif GLOB_CHARS & set(text):
        root = _glob_root(text)
        matches = sorted(glob.iglob(os.path.expanduser(text), recursive=True))
        files = [m for m in matches if Path(m).is_file()]
        if not files:
            yield text, Path(text).name, None, f"no files match the pattern {text!r}"
        for match in files:
            file = Path(match)
            try:
                key = file.relative_to(root).as_posix()
            except ValueError:
                key = file.name
            yield str(file), key, None, None
    else:
        yield text, path.name or text, None, f"no such file or folder: {text}"


def iter_items(sources: Source | Iterable[Source]) -> Iterator[Item]:
    """Every item the sources stand for, numbered from 0 in order; keys are made unique."""
    seen: set[str] = set()
    index = 0
    for source in _normalise(sources):
        for text, key, array, error in _expand(source):
            if array is not None:
                key = f"array_{index:06d}.png"
            unique, n = key, 1
            while unique in seen:
                stem, dot, suffix = key.rpartition(".")
                unique = f"{stem}_{n}.{suffix}" if dot else f"{key}_{n}"
                n += 1
            seen.add(unique)
            yield Item(index, text if array is None else f"<array {index}>", unique, array, error)
            index += 1


def count_items(sources: Source | Iterable[Source]) -> int:
    """How many items the sources stand for (walks folders; reads no file)."""
    return sum(1 for _ in iter_items(sources))


def check_sources_fit(sources: Source | Iterable[Source], media: str, model_name: str) -> None:
    """Refuse, before any work, files named directly whose kind the model cannot read."""
    if media != "image":
        return
    for source in _normalise(sources):
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
