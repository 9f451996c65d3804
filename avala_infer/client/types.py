"""The objects the local client returns: the cloud SDK's fields (``avala.types``), as plain dataclasses.

``AutoLabelJob`` also answers to the names the Avala docs' examples use: ``progress`` (percent), ``tasks_labeled``
and ``error``.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

LOCAL_OWNER = "local"  # the one local user and organization: every dataset's owner_name (the SDK's datasets/{owner}/)


def _time(value: str | None) -> datetime.datetime | None:
    return datetime.datetime.fromisoformat(value) if value else None


_TIME_FIELDS = frozenset({"created_at", "updated_at", "started_at", "completed_at"})


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def _build(cls, row: dict[str, Any]):
    names = _field_names(cls)  # cached: a list page builds a hundred of each (the HTTP API's hot path)
    values = {k: v for k, v in row.items() if k in names}
    for key in _TIME_FIELDS.intersection(values):
        values[key] = _time(values[key])
    return cls(**values)


@dataclasses.dataclass
class CursorPage(Generic[T]):
    """One page of a listing; iterate it for its items; ``next_cursor`` fetches the next page."""

    items: list[T] = dataclasses.field(default_factory=list)
    next_cursor: str | None = None
    previous_cursor: str | None = None

    @property
    def has_more(self) -> bool:
        return self.next_cursor is not None

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclasses.dataclass
class Project:
    uid: str
    name: str
    status: str | None = None
    data_type: str = "image"
    ontology: list[str] = dataclasses.field(default_factory=list)  # every model type's labels, in one list
    models: dict[str, str] = dataclasses.field(default_factory=dict)  # model type -> model
    dataset: str | None = None
    task_count: int = 0
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None
    ontologies: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # model type -> labels (class ids)
    label_maps: dict[str, dict[str, str | None]] = dataclasses.field(default_factory=dict)  # model type -> map

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Project:
        return _build(cls, row)

    @property
    def labels(self) -> list[str]:
        """The project's labels (``ontology``)."""
        return self.ontology


@dataclasses.dataclass
class Dataset:
    uid: str
    name: str
    slug: str
    item_count: int = 0
    data_type: str | None = None
    project: str | None = None
    owner_name: str = LOCAL_OWNER
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Dataset:
        return _build(cls, {**row, "project": row.get("project_uid")})


@dataclasses.dataclass
class DatasetItem:
    uid: str
    key: str | None = None
    dataset: str | None = None
    path: str | None = None
    text: str | None = None
    size: int = 0
    content_hash: str | None = None
    created_at: datetime.datetime | None = None
    id: int | None = None  # the item's number in the store (the SDK's DatasetItem.id)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> DatasetItem:
        return _build(cls, {**row, "dataset": row.get("dataset_uid")})


@dataclasses.dataclass
class Task:
    uid: str
    type: str | None = None
    name: str | None = None
    status: str | None = None
    project: str | None = None
    item: str | None = None
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Task:
        return _build(cls, {**row, "project": row.get("project_uid"), "item": row.get("item_uid")})


@dataclasses.dataclass
class AutoLabelJob:
    uid: str
    status: str | None = None
    model_type: str | None = None
    confidence_threshold: float | None = None
    labels: list[str] = dataclasses.field(default_factory=list)
    dry_run: bool = False
    total_items: int = 0
    processed_items: int = 0
    successful_items: int = 0
    failed_items: int = 0
    skipped_items: int = 0
    progress_pct: float | None = None
    error_message: str | None = None
    summary: dict[str, Any] | None = None
    started_at: datetime.datetime | None = None
    completed_at: datetime.datetime | None = None
    created_at: datetime.datetime | None = None
    project: str | None = None
    model: str | None = None
    aggregation: str | None = None  # NER jobs: how tokens become entities (None: the default, first)
    label_map: dict[str, str | None] | None = None  # the project's label map for the model, when the job began
    settings_hash: str | None = None  # the fingerprint of the settings that change results (skip rule)
    overwrite: bool = False  # relabel even tasks holding a result made with the same settings
    attempts: int = 0  # how many times a worker took the job up (more than 1 after a takeover or a restart)
    executor: str | None = None  # where its predictions run: local, ray (None: the worker's executor)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AutoLabelJob:
        total, processed = row.get("total_items") or 0, row.get("processed_items") or 0
        pct = 100.0 if row.get("status") == "completed" else round(100.0 * processed / total, 1) if total else 0.0
        return _build(cls, {**row, "project": row.get("project_uid"), "progress_pct": pct})

    @property
    def progress(self) -> float:
        """Percent of the project's tasks processed (the docs' ``job.progress``)."""
        return self.progress_pct or 0.0

    @property
    def tasks_labeled(self) -> int:
        """Tasks that hold this job's labels when it ends (the docs' ``job.tasks_labeled``): those it labeled
        (``successful_items``) plus those whose identical result, made earlier with the same model and settings,
        it kept as its own instead of predicting again (``skipped_items``). Re-running the docs' create example
        (the monitoring example does) thus says "Labeled 8 tasks", not 0; ``successful_items`` counts new
        predictions only."""
        return self.successful_items + self.skipped_items

    @property
    def error(self) -> str | None:
        """Why the job failed (the docs' ``job.error``)."""
        return self.error_message
