"""Exports over HTTP, through the app's client (written in the background by its threads): ``POST /exports/``
(``{"project"}`` or ``{"dataset"}``, optional ``format``, default ``jsonl``, and ``model_type``) answers 201 with the
pending export, ``GET /exports/`` and ``/exports/{uid}/`` read them (``status`` ends ``exported`` or ``failed``,
``error`` / ``error_message`` saying why), and an exported one's ``download_url`` is ``/media/exports/{uid}/``:
its one file, or a zip when its formats write several. That route serves only the file the export wrote in its
own folder under the home; no path comes from the request."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from avala_infer.client.exports import Export
from avala_infer.server.pages import CURSOR, LIMIT, client_of, jsonable, page_json
from avala_infer.server.schemas import DateTime, Page, errors

router = APIRouter(tags=["exports"])


class ExportRequest(BaseModel):
    """The body of ``POST /exports/``: a project or a dataset (the SDK sends one of them)."""

    model_config = ConfigDict(extra="forbid")

    project: str | None = Field(None, description="The project whose results to export")
    dataset: str | None = Field(None, description="Or its dataset")
    format: str | list[str] | None = Field(
        None, description="jsonl (default), coco, yolo, labelstudio, conll or masks; several as a list or 'coco,yolo'"
    )
    model_type: str | None = Field(None, description="Which model type's results, when the project has several")


class ExportOut(BaseModel):
    """An export: the SDK's ``Export`` fields and ours; ``error`` is the docs' name of ``error_message``."""

    uid: str
    status: str | None = Field(description="pending, exporting, exported or failed")
    download_url: str | None = Field(description="Where the exported file is served (with the API key), once exported")
    created_at: DateTime | None
    updated_at: DateTime | None
    started_at: DateTime | None
    completed_at: DateTime | None
    project: str | None
    dataset: str | None
    formats: list[str]
    format: str = Field(description="The formats, comma-separated")
    model_type: str | None
    error_message: str | None = Field(description="Why it failed")
    error: str | None = Field(description="The docs' name of error_message")


def export_json(request: Request, export: Export) -> dict[str, Any]:
    """The SDK's ``Export`` fields (``download_url`` set once exported) plus ours; the file's name is not shown."""
    out = jsonable(export)
    out.pop("file", None)
    url = str(request.url_for("export_file", uid=export.uid)) if export.status == "exported" else None
    out.update(download_url=url, format=export.format, formats=list(export.formats), error=export.error_message)
    return out


@router.post(
    "/exports/",
    status_code=201,
    response_model=ExportOut,
    responses=errors(400, 404),
    summary="Create an export (written in the background)",
)
def create_export(request: Request, body: ExportRequest | None = None) -> dict:
    body = body or ExportRequest()
    export = client_of(request).exports.create(
        body.project, dataset=body.dataset, format=body.format, model_type=body.model_type
    )
    return export_json(request, export)


@router.get("/exports/", response_model=Page[ExportOut], responses=errors(400), summary="List exports")
def list_exports(
    request: Request,
    project: str | None = Query(None, description="Only this project's exports"),
    limit: int | None = LIMIT,
    cursor: str | None = CURSOR,
) -> dict:
    page = client_of(request).exports.list(project=project, limit=limit, cursor=cursor)
    return page_json(request, page, lambda export: export_json(request, export))


@router.get("/exports/{uid}/", response_model=ExportOut, responses=errors(404), summary="Get an export")
def get_export(request: Request, uid: str) -> dict:
    return export_json(request, client_of(request).exports.get(uid))


@router.get(
    "/media/exports/{uid}/",
    name="export_file",
    response_class=Response,
    responses={
        200: {"description": "The export's one file, or a zip of its files", "content": {"*/*": {}}},
        **errors(404),
    },
    summary="Download an exported export's file",
)
def export_file(request: Request, uid: str) -> Response:
    """The export's one file, or the zip of its files; a 404 while it is not exported."""
    path = client_of(request).exports.file(uid)
    return FileResponse(path, filename=path.name)
