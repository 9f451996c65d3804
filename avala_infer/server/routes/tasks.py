"""Tasks (one per item of a project): ``GET /tasks/?project=&status=`` and ``/tasks/{uid}/``."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from avala_infer.server.pages import CURSOR, LIMIT, client_of, jsonable, page_json
from avala_infer.server.schemas import Page, Task, errors

router = APIRouter(tags=["tasks"])


@router.get("/tasks/", response_model=Page[Task], responses=errors(400, 404), summary="List tasks")
def list_tasks(
    request: Request,
    project: str | None = Query(None, description="Only this project's tasks"),
    status: str | None = Query(None, description="pending, labeled, completed, reviewed or rejected"),
    limit: int | None = LIMIT,
    cursor: str | None = CURSOR,
) -> dict:
    tasks = client_of(request).tasks.list(project=project, status=status, limit=limit, cursor=cursor)
    return page_json(request, tasks)


@router.get("/tasks/{uid}/", response_model=Task, responses=errors(404), summary="Get a task")
def get_task(request: Request, uid: str) -> dict:
    return jsonable(client_of(request).tasks.get(uid))
