"""The local user and organization, enough for ``avala configure``: ``GET /users/me/``, ``GET /organizations/``
and ``/organizations/{slug}/``."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from avala_infer.server.pages import CURSOR, LIMIT, client_of, jsonable, page_json
from avala_infer.server.schemas import Organization, Page, User, errors

router = APIRouter(tags=["account"])


@router.get("/users/me/", response_model=User, summary="The local user")
def me(request: Request) -> dict:
    return jsonable(client_of(request).users.me())


@router.get(
    "/organizations/", response_model=Page[Organization], summary="List organizations (the one local organization)"
)
def list_organizations(
    request: Request,
    limit: int | None = LIMIT,
    cursor: str | None = CURSOR,
    page: str | None = Query(None, description="Accepted for the SDK's page-number paging; there is one page"),
) -> dict:
    return page_json(request, client_of(request).organizations.list(limit=limit, cursor=cursor))


@router.get("/organizations/{slug}/", response_model=Organization, responses=errors(404), summary="Get an organization")
def get_organization(request: Request, slug: str) -> dict:
    return jsonable(client_of(request).organizations.get(slug))
