"""Import files into a project: folders, globs, manifests of image paths, text files; hashes, no decoding.

An image project takes image files, folders and globs, and manifests: a ``.txt`` file of paths (one per line)
or a ``.jsonl``/``.csv`` whose ``path`` field names them, relative paths resolved from the manifest's folder. A
text project takes text files as the engine reads them (``.txt`` whole or ``per_line``, ``.jsonl``/``.csv``
records with ``text_field``) and :class:`~avala_infer.Text` strings. Every item gets its content's sha256.
Sources that name nothing (a missing path, an empty glob or folder, a bad record or manifest line, a manifest row
with an empty path or naming a folder, an empty text) are reported, not imported; a bad line of a ``.jsonl``
(not JSON, a byte that is not UTF-8) fails that line only. A corrupt image is imported and fails its task when
labeled, as it would in the engine. A file reached twice in one import (named twice, a folder plus a glob, a
manifest listing it twice: the same real path) is one item. Sources that stand for no file at all (an empty
folder, a glob matching nothing) are refused before any work, with the error ``label`` gives.

Importing again is cheap: a file already in the project with the same size and mtime is not read again (its
recorded hash stands); only new or changed files are hashed.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from avala_infer.engine.sources import TextReading, check_some_items, check_sources_fit, iter_items
from avala_infer.errors import UnsupportedInputError
from avala_infer.store import Store

MANIFEST_SUFFIXES = (".txt", ".jsonl", ".csv")


@dataclasses.dataclass
class ImportReport:
    created: int = 0
    existing: int = 0
    failed: list[dict[str, str]] = dataclasses.field(default_factory=list)  # {"source", "error"}, first 100 kept
    failed_count: int = 0

    def fail(self, source: str, error: str) -> None:
        self.failed_count += 1
        if len(self.failed) < 100:
            self.failed.append({"source": source, "error": error})


def _sha256_file(path: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _manifest_entries(path: Path) -> Iterator[tuple[str, str | None, str | None]]:
    """(where: ``manifest:line``, the path it names or None, what is wrong with the line or None) per entry."""
    suffix = path.suffix.lower()
    errors = "surrogateescape" if suffix == ".jsonl" else "strict"  # a bad byte fails its line of a .jsonl
    with path.open(encoding="utf-8-sig", errors=errors, newline="") as handle:
        if suffix == ".csv":
            rows = csv.DictReader(handle)
            if "path" not in (rows.fieldnames or []):
                yield str(path), None, f"no 'path' column in its header ({', '.join(rows.fieldnames or [])})"
                return
            for row in rows:
                value = row.get("path")
                where = f"{path}:{rows.line_num}"
                yield (where, value.strip(), None) if value and value.strip() else (where, None, "empty 'path'")
        elif suffix == ".jsonl":
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    line.encode("utf-8")
                except UnicodeEncodeError as exc:
                    yield where, None, f"not UTF-8 text (byte 0x{ord(line[exc.start]) & 0xFF:02x}); save it as UTF-8"
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield where, None, f'not a JSON object ({exc.msg}); write one {{"path": ...}} per line'
                    continue
                value = record.get("path") if isinstance(record, dict) else None
                if isinstance(value, str) and value.strip():
                    yield where, value.strip(), None
                else:
                    yield where, None, "no string 'path' field; write one {\"path\": ...} per line"
        else:
            for number, line in enumerate(handle, 1):
                if line.strip() and not line.startswith("#"):
                    yield f"{path}:{number}", line.strip(), None


def _manifest_paths(path: Path, report: ImportReport) -> Iterator[str]:
    """The image paths a manifest lists (relative ones from its folder); bad lines and an unreadable manifest
    go into ``report``."""
    try:
        for where, entry, error in _manifest_entries(path):
            if error is None:
                entry = entry if os.path.isabs(entry) else str(path.parent / entry)
                if os.path.isdir(entry):
                    error = f"names a folder ({entry}); a manifest lists image files, one per row"
            if error is not None:
                report.fail(where, error)
            else:
                yield entry
    except UnicodeDecodeError as exc:
        report.fail(str(path), f"manifest is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8")
    except csv.Error as exc:
        report.fail(str(path), f"manifest is not valid CSV: {exc}")
    except OSError as exc:
        report.fail(str(path), f"cannot read the manifest: {exc.strerror or exc}")


def _check_source(source: Any) -> Any:
    if isinstance(source, (str, os.PathLike)):
        return source
    if type(source).__module__ == "numpy":  # an image array, as the engine takes
        return source
    raise UnsupportedInputError(
        f"cannot import {source!r} ({type(source).__name__}): give file or folder paths, globs, manifests, or "
        "avala_infer.Text strings for a text project"
    )


def _is_manifest(source: Any) -> bool:
    return (
        isinstance(source, (str, os.PathLike))
        and Path(source).suffix.lower() in MANIFEST_SUFFIXES
        and Path(source).is_file()
    )


def _image_sources(sources: Iterable[Any], report: ImportReport) -> Iterator[Any]:
    for source in sources:
        if _is_manifest(source):
            yield from _manifest_paths(Path(source), report)
        else:
            yield source


def import_sources(
    store: Store,
    project_uid: str,
    sources: Iterable[Any],
    *,
    text_field: str = "text",
    per_line: bool = False,
) -> ImportReport:
    """Add the items ``sources`` stand for to the project (a task each); see the module docstring."""
    project = store.projects.get(project_uid)
    media = project["data_type"]
    dataset_uid = store.items.project_dataset(project_uid)["uid"]
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if isinstance(sources, (list, tuple)):  # refuse an image for a text project (and the reverse) before any work
        sources = [_check_source(s) for s in sources]
        direct = [s for s in sources if media == "text" or not _is_manifest(s)]
        check_sources_fit(direct, media, f"project {project_uid} ({media})")
        if len(direct) == len(sources):  # no manifest (its bad rows are reported): refuse sources that are empty
            check_some_items(sources, media, TextReading(per_line=per_line, field=text_field))
    else:
        sources = (_check_source(s) for s in sources)
    report = ImportReport()
    if media == "image":
        sources = _image_sources(sources, report)

    def file_record(item) -> dict[str, Any]:
        path = str(Path(item.source).resolve())
        stat = os.stat(path)
        digest = store.items.known_file_hash(dataset_uid, path, stat.st_size, stat.st_mtime_ns)
        size = stat.st_size
        if digest is None:  # new, or changed since it was imported: read it
            digest, size = _sha256_file(path)
        if media == "text" and size <= 4096 and not Path(path).read_bytes().decode("utf-8-sig", "replace").strip():
            raise OSError(f"{path} holds no text (empty, or only blank space); nothing to label")
        return {"key": item.key, "path": path, "size": size, "content_hash": digest, "mtime_ns": stat.st_mtime_ns}

    def records() -> Iterator[dict[str, Any]]:
        for item in iter_items(sources, media, TextReading(per_line=per_line, field=text_field), unique=True):
            try:
                if item.error:
                    raise OSError(item.error)
                if item.text is not None:
                    data = item.text.encode("utf-8")
                    yield {"key": item.key, "text": item.text, "size": len(data),
                           "content_hash": hashlib.sha256(data).hexdigest()}  # fmt: skip
                else:
                    yield file_record(item)
            except OSError as exc:
                report.fail(item.source, getattr(exc, "strerror", None) or str(exc))

    counts = store.items.add(project_uid, records())
    report.created, report.existing = counts["created"], counts["existing"]
    return report
