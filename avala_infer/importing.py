"""Import files into a project: folders, globs, manifests of image paths, text files; hashes, no decoding.

An image project takes image files, folders and globs, and manifests: a ``.txt`` file of paths (one per line)
or a ``.jsonl``/``.csv`` whose ``path`` field names them, relative paths resolved from the manifest's folder. A
text project takes text files as the engine reads them (``.txt`` whole or ``per_line``, ``.jsonl``/``.csv``
records with ``text_field``) and :class:`~avala_infer.Text` strings. Every item gets its content's sha256.
Sources that name nothing (a missing path, an empty glob, a bad record) are reported, not imported; a corrupt
image is imported and fails its task when labeled, as it would in the engine.
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

from avala_infer.engine.sources import TextReading, check_sources_fit, iter_items
from avala_infer.store import Store

MANIFEST_SUFFIXES = (".txt", ".jsonl", ".csv")


@dataclasses.dataclass
class ImportReport:
    created: int = 0
    existing: int = 0
    failed: list[dict[str, str]] = dataclasses.field(default_factory=list)  # {"source", "error"}, first 100 kept
    failed_count: int = 0


def _sha256_file(path: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _manifest_paths(path: Path) -> Iterator[str]:
    base = path.parent
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8", newline="") as handle:
        if suffix == ".csv":
            entries = (row.get("path") or "" for row in csv.DictReader(handle))
        elif suffix == ".jsonl":
            entries = (json.loads(line).get("path", "") for line in handle if line.strip())
        else:
            entries = (line.strip() for line in handle if line.strip() and not line.startswith("#"))
        for entry in entries:
            yield str(entry) if os.path.isabs(entry) else str(base / entry)


def _is_manifest(source: Any) -> bool:
    return (
        isinstance(source, (str, os.PathLike))
        and Path(source).suffix.lower() in MANIFEST_SUFFIXES
        and Path(source).is_file()
    )


def _image_sources(sources: Iterable[Any]) -> Iterator[Any]:
    for source in sources:
        if _is_manifest(source):
            yield from _manifest_paths(Path(source))
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
    project = store.get_project(project_uid)
    media = project["data_type"]
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if isinstance(sources, (list, tuple)):  # refuse an image for a text project (and the reverse) before any work
        direct = [s for s in sources if media == "text" or not _is_manifest(s)]
        check_sources_fit(direct, media, f"project {project_uid} ({media})")
    report = ImportReport()
    if media == "image":
        sources = _image_sources(sources)

    def records() -> Iterator[dict[str, Any]]:
        for item in iter_items(sources, media, TextReading(per_line=per_line, field=text_field)):
            try:
                if item.error:
                    raise OSError(item.error)
                if item.text is not None:
                    data = item.text.encode("utf-8")
                    yield {"key": item.key, "text": item.text, "size": len(data),
                           "content_hash": hashlib.sha256(data).hexdigest()}  # fmt: skip
                else:
                    digest, size = _sha256_file(item.source)
                    path = str(Path(item.source).resolve())
                    yield {"key": item.key, "path": path, "size": size, "content_hash": digest}
            except OSError as exc:
                report.failed_count += 1
                if len(report.failed) < 100:
                    report.failed.append({"source": item.source, "error": getattr(exc, "strerror", None) or str(exc)})

    counts = store.add_items(project_uid, records())
    report.created, report.existing = counts["created"], counts["existing"]
    return report
