"""Every error answer is ``{"detail": "<a string>"}`` (the SDK reads ``detail`` only when it is a string):
our exception tree mapped to statuses, FastAPI's 422 list flattened into one sentence, anything else a logged
500 with a generic message."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from avala_infer.errors import AvalaInferError, ConfigError, ConflictError, NotFoundError, StoreError
from avala_infer.server.auth import Unauthorized

log = logging.getLogger(__name__)

GENERIC_500 = "internal server error; the server's log says what went wrong"


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape."""
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def status_for(exc: AvalaInferError) -> int:
    """The HTTP status of one of our errors."""
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, ConfigError):
        return 400
    if isinstance(exc, StoreError):
        return 503
    return 500


def validation_detail(exc: RequestValidationError) -> str:
    """FastAPI's list of field errors as one sentence: ``query parameter 'limit': Input should be ...``."""
    parts = []
    for error in exc.errors():
        where = [str(x) for x in error.get("loc", ())]
        kind = {"query": "query parameter", "path": "path parameter", "body": "body field", "header": "header"}
        prefix = kind.get(where[0], where[0]) if where else "request"
        name = ".".join(where[1:])
        parts.append(f"{prefix} {name!r}: {error.get('msg', 'invalid')}" if name else f"{prefix}: {error.get('msg')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that keep every error answer ``{"detail": "<string>"}``."""

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return error_response(401, str(exc))

    @app.exception_handler(AvalaInferError)
    async def ours(request: Request, exc: AvalaInferError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
        return error_response(status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_detail(exc))

    @app.exception_handler(HTTPException)
    async def http(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unknown(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, GENERIC_500)
