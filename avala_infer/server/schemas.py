"""The response models of the routes: what each answer's JSON is, for the OpenAPI schema (and so for
schemathesis and the docs page) and for FastAPI, which validates every answer against its route's
``response_model`` and serializes it through it (a field not declared here is not sent).

They mirror the official SDK's models (``avala.types``) plus our extra fields and the docs' aliases; lists and
booleans are never null (the SDK's models refuse null there). Times are ISO 8601 strings in UTC ending in ``Z``
(``pages.iso``): declared as ``date-time`` strings, passed through as they are.

``errors(...)`` declares the ``{"detail": "<a string>"}`` error answers a route can give; the app declares 401,
422, 500 and 503 on every ``/api/v1`` route (``COMMON_ERRORS``), a route adds the ones of its own (400, 404).
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")

DateTime = Annotated[str, Field(json_schema_extra={"format": "date-time"}, description="ISO 8601, UTC, ends in Z")]

ERROR_REASONS = {
    400: "A bad value (an unknown status or model type, a bad cursor, an option out of range)",
    401: "The X-Avala-Api-Key header is missing or wrong",
    404: "No such object (the detail names it)",
    409: "The request conflicts with the object's state",
    422: "The request does not parse (a parameter's or the body's type)",
    429: "Too many requests: wait Retry-After seconds",
    500: "An unexpected server error (the server's log says what went wrong)",
    503: "The store is busy or unavailable: retry",
}


class ErrorDetail(BaseModel):
    """Every error answer: one human-readable string (never a list: the SDK reads ``detail`` as a string)."""

    detail: str


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry declaring the error answers ``statuses`` as :class:`ErrorDetail`."""
    return {status: {"model": ErrorDetail, "description": ERROR_REASONS.get(status, "Error")} for status in statuses}


COMMON_ERRORS = errors(401, 422, 500, 503)


class Page(BaseModel, Generic[T]):
    """A list page: ``next`` is the URL of the next page (its ``cursor`` parameter is what the SDK sends back),
    null on the last page; ``previous`` is always null (pages go forward)."""

    results: list[T]
    next: str | None
    previous: str | None


class User(BaseModel):
    """The local user (``GET /users/me/``)."""

    uid: str
    username: str
    email: str | None


class Organization(BaseModel):
    """The one local organization (slug ``local``, every dataset's owner)."""

    uid: str
    name: str
    slug: str
    is_verified: bool
    is_active: bool


class Project(BaseModel):
    """A project: the SDK's ``Project`` fields plus its data type, models, ontology and dataset."""

    uid: str
    name: str
    status: str | None
    data_type: str = Field(description="image or text")
    ontology: list[str] = Field(description="Every model type's labels, in one list")
    models: dict[str, str] = Field(description="Model type -> model name")
    dataset: str | None = Field(description="The project's dataset uid")
    task_count: int
    created_at: DateTime | None
    updated_at: DateTime | None
    ontologies: dict[str, list[str]] = Field(description="Model type -> labels, in class-id order")
    label_maps: dict[str, dict[str, str | None]] = Field(description="Model type -> model label -> project label")


class Task(BaseModel):
    """A task: one item of a project, with its labeling status."""

    uid: str
    type: str | None = Field(description="image or text")
    name: str | None
    status: str | None = Field(description="pending, labeled, completed, reviewed or rejected")
    project: str | None
    item: str | None = Field(description="The dataset item's uid")
    created_at: DateTime | None
    updated_at: DateTime | None


class Dataset(BaseModel):
    """A project's dataset: the SDK's ``Dataset`` fields (``owner_name`` is always ``local``)."""

    uid: str
    name: str
    slug: str
    item_count: int
    data_type: str | None
    project: str | None
    owner_name: str
    created_at: DateTime | None
    updated_at: DateTime | None
    status: str = Field(description="Always created: a local dataset is ready once made")
    is_sequence: bool


class DatasetItem(BaseModel):
    """A dataset item: the SDK's ``DatasetItem`` fields; ``url`` serves its file (with the API key)."""

    uid: str
    key: str | None = Field(description="The file name (or the text's key)")
    dataset: str | None
    text: str | None = Field(description="A text item's text")
    size: int
    content_hash: str | None
    created_at: DateTime | None
    id: int | None = Field(description="The item's number in the store")
    dataset_owner_name: str
    dataset_slug: str
    url: str
    is_hidden: bool
    metadata: dict[str, Any]


class AutoLabelJob(BaseModel):
    """An auto-label job: the SDK's ``AutoLabelJob`` fields, ours, and the docs' names (``progress``,
    ``tasks_labeled``, ``error``)."""

    uid: str
    status: str | None = Field(description="pending, running, completed, failed or cancelled")
    model_type: str | None
    confidence_threshold: float | None
    labels: list[str]
    dry_run: bool
    total_items: int
    processed_items: int
    successful_items: int
    failed_items: int
    skipped_items: int
    progress_pct: float
    error_message: str | None
    summary: dict[str, Any] | None
    started_at: DateTime | None
    completed_at: DateTime | None
    created_at: DateTime | None
    project: str | None
    model: str | None
    aggregation: str | None = Field(description="NER jobs: how tokens become entities")
    label_map: dict[str, str | None] | None
    settings_hash: str | None = Field(description="Fingerprint of the settings that change results")
    overwrite: bool
    executor: str | None = Field(description="Where its predictions run: local, ray, or null (the worker's choice)")
    attempts: int = Field(description="How many times a worker took the job up")
    progress: float = Field(description="The docs' name of progress_pct")
    tasks_labeled: int = Field(description="Tasks holding this job's labels: successful_items + skipped_items")
    error: str | None = Field(description="The docs' name of error_message")
