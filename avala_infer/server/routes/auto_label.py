"""Auto-label jobs over HTTP, through the app's client (the same rules as the Python API and the CLI):
``POST /projects/{uid}/auto-label/`` queues a job (201 with the job), ``GET /auto-label-jobs/?project=`` and
``/auto-label-jobs/{uid}/`` read them, ``DELETE /auto-label-jobs/{uid}/`` cancels one (204, no body).

``model_type`` takes our six names and the Avala CLI's ``yolo`` (object detection) and ``sam3`` (instance
segmentation). A job's JSON carries the SDK's field names and the docs' (``progress``, ``tasks_labeled``,
``error``), never a null list or boolean (the SDK's model rejects those)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from avala_infer.client.types import AutoLabelJob
from avala_infer.errors import ConfigError
from avala_infer.server.pages import CURSOR, LIMIT, client_of, jsonable, no_content, page_json
from avala_infer.server.schemas import AutoLabelJob as AutoLabelJobOut
from avala_infer.server.schemas import Page, errors
from avala_infer.types import ModelType

router = APIRouter(tags=["auto-label jobs"])

# the Avala CLI's `--model-type` choices, as our model types
MODEL_TYPE_ALIASES = {"yolo": ModelType.OBJECT_DETECTION.value, "sam3": ModelType.INSTANCE_SEGMENTATION.value}


class AutoLabelRequest(BaseModel):
    """The body of ``POST /projects/{uid}/auto-label/``: every field is optional (``{}`` is valid)."""

    model_config = ConfigDict(extra="forbid")

    model_type: str | None = Field(None, description="A model type, or the Avala CLI's yolo or sam3")
    confidence_threshold: float | None = Field(None, description="Minimum confidence (default 0.25)")
    labels: list[str] | None = Field(None, description="Keep only these labels")
    dry_run: bool | None = Field(None, description="Count what would be labeled, write nothing")
    aggregation: str | None = Field(None, description="NER only: none, simple, first, average or max")
    overwrite: bool | None = Field(None, description="Relabel tasks holding a result made with the same settings")
    executor: Literal["local", "ray"] | None = Field(
        None, description="Where its predictions run: local (the worker's engine) or ray (a Ray cluster's actors)"
    )


def resolve_model_type(name: str | None) -> str | None:
    """Our model type for ``name`` (``yolo`` and ``sam3`` too); an unknown one is a ConfigError (400) naming
    the valid ones."""
    if name is None:
        return None
    key = name.strip().lower()
    if key in MODEL_TYPE_ALIASES:
        return MODEL_TYPE_ALIASES[key]
    try:
        return ModelType.parse(key).value
    except ConfigError:
        valid = ", ".join([*(m.value for m in ModelType), *MODEL_TYPE_ALIASES])
        raise ConfigError(f"unknown model type {name!r}; valid model types: {valid}") from None


def job_json(job: AutoLabelJob) -> dict[str, Any]:
    """The SDK's ``AutoLabelJob`` fields plus the docs' names; lists and booleans never null."""
    out = jsonable(job)
    out.update(
        labels=list(job.labels or []),
        dry_run=bool(job.dry_run),
        overwrite=bool(job.overwrite),
        progress_pct=float(job.progress_pct or 0.0),
        progress=float(job.progress),
        tasks_labeled=job.tasks_labeled,
        error=job.error,
    )
    return out


@router.post(
    "/projects/{uid}/auto-label/",
    status_code=201,
    response_model=AutoLabelJobOut,
    responses=errors(400, 404),
    summary="Create an auto-label job",
)
def create_job(request: Request, uid: str, body: AutoLabelRequest | None = None) -> dict:
    body = body or AutoLabelRequest()
    job = client_of(request).auto_label_jobs.create(
        uid,
        model_type=resolve_model_type(body.model_type),
        confidence_threshold=body.confidence_threshold,
        labels=body.labels,
        dry_run=body.dry_run,
        aggregation=body.aggregation,
        overwrite=body.overwrite,
        executor=body.executor,
    )
    return job_json(job)


@router.get(
    "/auto-label-jobs/", response_model=Page[AutoLabelJobOut], responses=errors(400), summary="List auto-label jobs"
)
def list_jobs(
    request: Request,
    project: str | None = Query(None, description="Only this project's jobs"),
    limit: int | None = LIMIT,
    cursor: str | None = CURSOR,
) -> dict:
    page = client_of(request).auto_label_jobs.list(project=project, limit=limit, cursor=cursor)
    return page_json(request, page, job_json)


@router.get(
    "/auto-label-jobs/{uid}/", response_model=AutoLabelJobOut, responses=errors(404), summary="Get an auto-label job"
)
def get_job(request: Request, uid: str) -> dict:
    return job_json(client_of(request).auto_label_jobs.get(uid))


@router.delete(
    "/auto-label-jobs/{uid}/",
    status_code=204,
    response_class=Response,
    responses=errors(400, 404),
    summary="Cancel an auto-label job",
)
def cancel_job(request: Request, uid: str) -> Response:
    """Cancel a pending job now, a running one after its batch in flight; 204 with no body."""
    client_of(request).auto_label_jobs.cancel(uid)
    return no_content()
