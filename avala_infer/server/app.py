"""The FastAPI app: ``create_app(home, api_keys)`` serves ``/api/v1`` over a local client of the store in
``home``. Every path is defined with its trailing ``/`` and nothing redirects (the SDK never follows a redirect:
a path without its slash is a 404, not a 307); every route needs the ``X-Avala-Api-Key`` header.

Routes are sync functions, run by FastAPI in its threadpool; they share the app's one :class:`Avala` client,
whose store connection is opened with ``check_same_thread=False`` and used under the client's lock, one call at
a time.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import uvicorn
from fastapi import APIRouter, Depends, FastAPI

from avala_infer.errors import ConfigError
from avala_infer.server.auth import require_key
from avala_infer.server.errors import install_error_handlers
from avala_infer.server.routes import account, auto_label, datasets, projects, tasks
from avala_infer.version import __version__

API_PREFIX = "/api/v1"


def create_app(
    home: str | os.PathLike, api_keys: Sequence[str], *, worker: bool = True, device: str = "auto"
) -> FastAPI:
    """The app over the store in ``home``, accepting any of ``api_keys``. The store is opened when the app starts
    (uvicorn's lifespan) and closed when it stops. With ``worker=True`` the app's client runs the auto-label jobs
    (on ``device``) and sends the webhooks on threads of this process, started with the app; ``worker=False`` is
    for a host where ``avala-infer worker`` processes run them. Stopping the app stops those threads after their
    batch in flight (an unfinished job is resumed by the next worker)."""
    keys = [k for k in api_keys if k]
    if not keys:
        raise ConfigError("the server needs at least one API key")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from avala_infer.client import Avala

        app.state.client = Avala(home=home, worker=worker, device=device)
        app.state.client.start_worker()  # jobs left by an earlier start (or queued by the CLI) run now
        try:
            yield
        finally:
            app.state.client.close()

    app = FastAPI(
        title="avala-infer",
        version=__version__,
        description="The Avala API of a local avala-infer store, for the official Avala SDK, CLI and avala-agents.",
        redirect_slashes=False,
        lifespan=lifespan,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs/",
        redoc_url=None,
    )
    app.state.api_keys = keys
    install_error_handlers(app)
    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_key)])
    for module in (account, projects, tasks, datasets, auto_label):
        api.include_router(module.router)
    app.include_router(api)
    return app


def serve(app: FastAPI, host: str, port: int) -> None:
    """Run ``app`` with uvicorn on ``host:port`` until SIGINT/SIGTERM."""
    uvicorn.run(app, host=host, port=port, log_level="warning")
