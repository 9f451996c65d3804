"""The client's resources, named and shaped as the cloud SDK's (``avala.resources``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from avala_infer.client.types import AutoLabelJob, CursorPage, Dataset, DatasetItem, Project, Task

if TYPE_CHECKING:
    from avala_infer.client import Avala
    from avala_infer.importing import ImportReport


class _Resource:
    def __init__(self, client: Avala) -> None:
        self._client = client

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._client._lock:
            return getattr(self._client._store, method)(*args, **kwargs)

    def _page(self, cls, method: str, *args: Any, **kwargs: Any) -> CursorPage:
        rows, next_cursor = self._call(method, *args, **kwargs)
        return CursorPage([cls.from_row(r) for r in rows], next_cursor, kwargs.get("cursor"))


class Projects(_Resource):
    def create(
        self,
        name: str,
        *,
        data_type: str = "image",
        ontology: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        models: dict[str, str] | None = None,
    ) -> Project:
        """A project with its dataset. ``ontology`` (or ``labels``) lists label names, whose positions are the
        class ids of exports; ``models`` maps a model type to the model (name, spec or weights path) that serves
        it, e.g. ``{"object_detection": "yolo11n"}``."""
        return Project.from_row(
            self._call("create_project", name, data_type=data_type, ontology=ontology or labels, models=models)
        )

    def get(self, uid: str) -> Project:
        return Project.from_row(self._call("get_project", uid))

    def list(self, *, limit: int | None = None, cursor: str | None = None) -> CursorPage[Project]:
        return self._page(Project, "list_projects", limit=limit, cursor=cursor)

    def update(
        self,
        uid: str,
        *,
        name: str | None = None,
        ontology: Sequence[str] | None = None,
        models: dict[str, str] | None = None,
    ) -> Project:
        return Project.from_row(self._call("update_project", uid, name=name, ontology=ontology, models=models))

    def import_items(
        self,
        uid: str,
        sources: Iterable[Any] | str | os.PathLike,
        *,
        text_field: str = "text",
        per_line: bool = False,
    ) -> ImportReport:
        """Import files, folders, globs or manifests (texts for a text project) as items with a task each."""
        from avala_infer.importing import import_sources

        with self._client._lock:
            return import_sources(self._client._store, uid, sources, text_field=text_field, per_line=per_line)

    def export(
        self,
        uid: str,
        out: str | os.PathLike,
        formats: Sequence[str] = ("jsonl",),
        *,
        model_type: str | None = None,
        model: str | None = None,
        mask_format: str = "rle",
    ) -> list:
        """Write the project's stored results (automatic drafts) in ``formats`` into ``out``; class ids are the
        ontology's positions. Returns the files written."""
        from pathlib import Path

        from avala_infer.exporting import export_project

        with self._client._lock:
            return export_project(
                self._client._store, uid, Path(out), list(formats), model_type, mask_format, model=model
            )


class Datasets(_Resource):
    def list(self, *, limit: int | None = None, cursor: str | None = None) -> CursorPage[Dataset]:
        return self._page(Dataset, "list_datasets", limit=limit, cursor=cursor)

    def get(self, uid: str) -> Dataset:
        return Dataset.from_row(self._call("get_dataset", uid))

    def list_items(self, uid: str, *, limit: int | None = None, cursor: str | None = None) -> CursorPage[DatasetItem]:
        return self._page(DatasetItem, "list_items", uid, limit=limit, cursor=cursor)


class Tasks(_Resource):
    def list(
        self,
        *,
        project: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> CursorPage[Task]:
        return self._page(Task, "list_tasks", project=project, status=status, limit=limit, cursor=cursor)

    def get(self, uid: str) -> Task:
        return Task.from_row(self._call("get_task", uid))

    def results(self, uid: str) -> list[dict[str, Any]]:
        """The automatic draft results of a task (one per model that labeled it)."""
        return self._call("task_results", uid)


class AutoLabelJobs(_Resource):
    def create(
        self,
        project_uid: str,
        *,
        model_type: str | None = None,
        confidence_threshold: float | None = None,
        labels: Sequence[str] | None = None,
        dry_run: bool | None = None,
        aggregation: str | None = None,
    ) -> AutoLabelJob:
        """Queue a job over the project's tasks; the worker runs it. ``model_type`` defaults to the project's
        only configured model type; ``confidence_threshold`` to 0.5. ``aggregation`` (NER jobs only: ``none``,
        ``simple``, ``first``, ``average``, ``max``) is how tokens become entities; by default ``first``, whole
        words, as labeling tools expect."""
        if model_type is None:
            models = self._call("get_project", project_uid)["models"]
            if len(models) != 1:
                from avala_infer.errors import ConfigError

                raise ConfigError(f"pass model_type: project {project_uid} serves {', '.join(models) or 'none'}")
            model_type = next(iter(models))
        row = self._call(
            "create_job",
            project_uid,
            model_type=model_type,
            confidence_threshold=0.5 if confidence_threshold is None else confidence_threshold,
            labels=labels,
            dry_run=bool(dry_run),
            aggregation=aggregation,
        )
        return AutoLabelJob.from_row(row)

    def get(self, uid: str) -> AutoLabelJob:
        return AutoLabelJob.from_row(self._call("get_job", uid))

    def list(
        self, *, project: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> CursorPage[AutoLabelJob]:
        return self._page(AutoLabelJob, "list_jobs", project=project, limit=limit, cursor=cursor)

    def cancel(self, uid: str) -> None:
        """Cancel a pending job now, a running one within one batch."""
        self._call("request_cancel", uid)

    def wait(self, uid: str, *, timeout: float | None = None, poll_s: float = 0.2) -> AutoLabelJob:
        """Poll until the job is completed, failed or cancelled (or ``timeout`` seconds pass); returns it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(uid)
            if job.status in ("completed", "failed", "cancelled"):
                return job
            if deadline is not None and time.monotonic() > deadline:
                return job
            time.sleep(poll_s)
