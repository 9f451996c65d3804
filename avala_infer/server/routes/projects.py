"""Projects as the SDK reads them: ``GET /users/me/projects/`` and ``/users/me/projects/{uid}/``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from avala_infer.server.pages import CURSOR, LIMIT, client_of, jsonable, page_json
from avala_infer.server.schemas import Page, Project, errors

router = APIRouter(tags=["projects"])


@router.get("/users/me/projects/", response_model=Page[Project], responses=errors(400), summary="List projects")
def list_projects(request: Request, limit: int | None = LIMIT, cursor: str | None = CURSOR) -> dict:
    return page_json(request, client_of(request).projects.list(limit=limit, cursor=cursor))


@router.get("/users/me/projects/{uid}/", response_model=Project, responses=errors(404), summary="Get a project")
def get_project(request: Request, uid: str) -> dict:
    return jsonable(client_of(request).projects.get(uid))
