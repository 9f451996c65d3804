"""What the routes share: the local client of the app, list pages ``{"results", "next", "previous"}`` whose
``next`` carries the opaque ``cursor`` the SDK sends back (with ``limit``), JSON values (datetimes as ISO 8601
UTC with ``Z``), and the empty 204 every DELETE answers."""

from __future__ import annotations

import dataclasses
import datetime
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import Query, Request, Response

if TYPE_CHECKING:
    from avala_infer.client import Avala
    from avala_infer.client.types import CursorPage

LIMIT = Query(None, ge=1, le=1000, description="Page size (default 100)")
CURSOR = Query(None, description="The opaque cursor of the page to fetch, from the previous page's `next`")


def client_of(request: Request) -> Avala:
    """The app's local client (one store connection behind a lock: safe from the threadpool's threads)."""
    return request.app.state.client


def iso(value: datetime.datetime) -> str:
    """ISO 8601 in UTC with ``Z`` (a naive time is taken as UTC)."""
    if value.tzinfo is not None and value.utcoffset():
        value = value.astimezone(datetime.timezone.utc)
    return value.replace(tzinfo=None).isoformat() + "Z"


@functools.cache
def _field_names(cls: type) -> tuple[str, ...] | None:
    """A dataclass's field names (cached: list pages serialise a hundred objects of one class), else None."""
    return tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None


_SCALARS = (str, int, float, bool, type(None))


def jsonable(value: Any) -> Any:
    """A client object (dataclass), dict, list or scalar as JSON values, datetimes as :func:`iso` strings."""
    cls = type(value)
    if cls in _SCALARS:
        return value
    names = _field_names(cls)
    if names is not None:
        out = {}
        for name in names:
            field = getattr(value, name)
            out[name] = field if type(field) in _SCALARS else jsonable(field)
        return out
    if isinstance(value, datetime.datetime):
        return iso(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def page_json(request: Request, page: CursorPage, shape: Callable[[Any], dict[str, Any]] = jsonable) -> dict:
    """A list answer: ``results`` (each item through ``shape``), ``next`` (this URL with the next cursor, or
    null on the last page) and ``previous`` (null: pages go forward only)."""
    next_url = None
    if page.next_cursor is not None:
        next_url = str(request.url.include_query_params(cursor=page.next_cursor))
    return {"results": [shape(item) for item in page.items], "next": next_url, "previous": None}


def no_content() -> Response:
    """The answer of every DELETE: 204 with no body (the SDK fails on a 200 with an empty body)."""
    return Response(status_code=204)
