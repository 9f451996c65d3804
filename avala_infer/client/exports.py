"""Exports in the background (``client.exports``), as the cloud SDK's: ``create`` answers at once with a pending
export, a thread of this client writes the project's results (as :meth:`Projects.export` does) into
``<home>/exports/<uid>/``, and ``get``/``wait`` see it end ``exported`` (its :meth:`Exports.file` ready) or
``failed`` (``error_message`` says why).

``format`` defaults to ``jsonl`` (:data:`DEFAULT_FORMAT`): our JSONL records, which hold every model type's
results as the store keeps them; ``coco``, ``yolo``, ``labelstudio``, ``conll`` and ``masks`` as for
``avala-infer export``, several at once as a list or ``"coco,yolo"``. An export that writes one file serves that
file; one that writes several (``yolo``, ``labelstudio``, ``masks``, several formats) serves a zip of them
(the files written, not the links ``yolo/images/`` holds to the project's images on this host: a client reads
those as the dataset's items).

An export whose process was killed (or whose thread stopped) before it ended is marked ``failed`` the next time
any client reads exports (``get``/``list``/``wait``), its partial files removed: it is never redone on its own.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import shutil
import stat
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avala_infer.client.resources import _Resource
from avala_infer.client.types import CursorPage, _build
from avala_infer.errors import AvalaInferError, ConfigError, NotFoundError

log = logging.getLogger(__name__)

DEFAULT_FORMAT = "jsonl"
EXPORTS_DIR = "exports"  # <home>/exports/<uid>/
DATA_DIR = "data"  # what the writers write, inside the export's folder
MAX_RUNNING = 2  # exports written at once by one client; the others wait as pending
FINISHED = ("exported", "failed")


@dataclasses.dataclass
class Export:
    """An export: the SDK's ``uid``, ``status`` (``pending``, ``exporting``, ``exported``, ``failed``), times, and
    ours: the ``project`` and its ``dataset``, ``formats``, ``model_type``, ``error_message`` and ``file`` (the
    file served, relative to the export's folder)."""

    uid: str
    status: str | None = None
    project: str | None = None
    dataset: str | None = None
    formats: list[str] = dataclasses.field(default_factory=list)
    model_type: str | None = None
    error_message: str | None = None
    file: str | None = None
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None
    started_at: datetime.datetime | None = None
    completed_at: datetime.datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Export:
        return _build(cls, row)

    @property
    def format(self) -> str:
        """The formats as one string (``"coco,yolo"``)."""
        return ",".join(self.formats)

    @property
    def error(self) -> str | None:
        return self.error_message


def parse_formats(value: str | Sequence[str] | None) -> list[str]:
    """``None`` -> ``["jsonl"]``; ``"coco,yolo"`` or ``["coco", "yolo"]`` -> both; an unknown name is a
    ConfigError listing the formats."""
    from avala_infer.exporters import FORMATS

    if value is None:
        return [DEFAULT_FORMAT]
    parts = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    formats = list(dict.fromkeys(p.strip().lower() for p in parts if p.strip()))
    if not formats:
        raise ConfigError(f"format is empty; give one of {', '.join(FORMATS)} (default {DEFAULT_FORMAT})")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown export format(s) {unknown}; formats: {', '.join(FORMATS)}")
    return formats


def package(folder: Path, written: Sequence[Path], name: str) -> str:
    """The file to serve, relative to ``folder``: the one file written, else a zip (``name``.zip) of everything
    under ``folder/data`` (regular files only; symlinks are not followed)."""
    data = folder / DATA_DIR
    if len(written) == 1 and Path(written[0]).is_file():
        return Path(written[0]).resolve().relative_to(folder.resolve()).as_posix()
    target = folder / f"{name}.zip"
    partial = folder / f".{name}.zip.partial"
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, files in os.walk(data):
            dirs.sort()
            for file in sorted(files):
                path = Path(root) / file
                if stat.S_ISREG(os.lstat(path).st_mode):
                    archive.write(path, path.relative_to(data).as_posix())
    os.replace(partial, target)
    return target.name


class Exports(_Resource):
    """``client.exports``: create (in the background), get, list, wait, and the ``file`` to download."""

    def __init__(self, client) -> None:
        super().__init__(client)
        self._slots = threading.BoundedSemaphore(MAX_RUNNING)

    def folder(self, uid: str) -> Path:
        """``<home>/exports/<uid>/``, where export ``uid`` writes (``uid`` must be a stored export's)."""
        return self._client.home / EXPORTS_DIR / self._call("exports.get", uid)["uid"]

    def create(
        self,
        project: str | None = None,
        *,
        dataset: str | None = None,
        format: str | Sequence[str] | None = None,
        model_type: str | None = None,
    ) -> Export:
        """Export the results of ``project`` (or of the project whose ``dataset`` this is) in ``format``
        (default ``jsonl``); returns the pending export at once. ``model_type`` picks the results of a project
        holding several types'. An unknown project or dataset is a NotFoundError, an unknown format a
        ConfigError, both raised here; what only writing finds (no results yet, ...) fails the export, with its
        ``error_message``."""
        from avala_infer.store import register_worker, unregister_worker, worker_id
        from avala_infer.types import ModelType

        formats = parse_formats(format)
        kind = None if model_type is None else ModelType.parse(model_type).value
        if dataset is not None:
            owner = self._call("items.get_dataset", dataset)["project_uid"]
            if project is not None and project != owner:
                raise ConfigError(f"dataset {dataset} belongs to project {owner}, not {project}: give one of them")
            project = owner
        if project is None:
            raise ConfigError("an export needs a project (or a dataset): exports.create(project=UID)")
        holder = worker_id()
        register_worker(holder)  # alive while this process's thread may still write it
        try:
            row = self._call("exports.create", project, formats, holder=holder, model_type=kind)
            thread = threading.Thread(
                target=self._write, args=(row["uid"], holder), name=f"export-{row['uid']}", daemon=True
            )
            thread.start()
        except BaseException:
            unregister_worker(holder)
            raise
        return Export.from_row(row)

    def _write(self, uid: str, holder: str) -> None:
        """The export's thread: wait for a slot, write the files with a connection of its own, record the end."""
        from avala_infer.projects.exports import export_project
        from avala_infer.store import Store, unregister_worker

        try:
            with self._slots, Store(self._client.home) as store:
                export = store.exports.get(uid)
                if not store.exports.start(uid, holder):
                    return
                folder = self._client.home / EXPORTS_DIR / uid
                try:
                    shutil.rmtree(folder, ignore_errors=True)
                    written = export_project(
                        store, export["project"], folder / DATA_DIR, export["formats"], export["model_type"]
                    )
                    store.exports.finish(uid, holder, package(folder, written, f"export-{uid}"))
                except Exception as exc:
                    if not isinstance(exc, AvalaInferError):
                        log.exception("export %s failed", uid)
                    shutil.rmtree(folder, ignore_errors=True)
                    reason = str(exc) if isinstance(exc, AvalaInferError) else f"{type(exc).__name__}: {exc}"
                    store.exports.fail(uid, holder, reason)
        except Exception:  # the store could not be opened: the export is failed as an orphan when next read
            log.exception("export %s could not run", uid)
        finally:
            unregister_worker(holder)

    def _fail_orphans(self) -> None:
        for uid in self._call("exports.fail_orphans"):
            shutil.rmtree(self._client.home / EXPORTS_DIR / uid, ignore_errors=True)

    def get(self, uid: str) -> Export:
        self._fail_orphans()
        return Export.from_row(self._call("exports.get", uid))

    def list(
        self, *, project: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> CursorPage[Export]:
        self._fail_orphans()
        return self._page(Export, "exports.list", project=project, limit=limit, cursor=cursor)

    def wait(self, uid: str, *, timeout: float | None = None, poll_s: float = 0.2) -> Export:
        """Poll until the export is exported or failed (or ``timeout`` seconds pass); returns it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            export = self.get(uid)
            if export.status in FINISHED or (deadline is not None and time.monotonic() > deadline):
                return export
            time.sleep(poll_s)

    def file(self, uid: str) -> Path:
        """The file of exported export ``uid`` (its one file, or the zip): a NotFoundError while it is not
        exported, or when that file is gone or is no longer a regular file inside the export's folder."""
        export = self.get(uid)
        if export.status != "exported" or not export.file:
            why = f": {export.error_message}" if export.error_message else "; wait until it is exported"
            raise NotFoundError(f"export {uid} is {export.status}, nothing to download{why}")
        # no symlink anywhere below the home (the exports folder, the export's, its file) and a regular file
        path = os.path.join(os.path.realpath(self._client.home), EXPORTS_DIR, export.uid, export.file)
        try:
            info = os.lstat(path)
        except OSError:
            raise NotFoundError(f"export {uid}'s file {export.file!r} is gone; create the export again") from None
        if not stat.S_ISREG(info.st_mode) or os.path.realpath(path) != os.path.normpath(path):
            raise NotFoundError(f"export {uid}'s file is no longer the regular file it wrote; create the export again")
        return Path(path)
