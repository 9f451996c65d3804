"""The FastAPI app: ``create_app(home, api_keys)`` serves ``/api/v1`` over a local client of the store in
``home``. Every path is defined with its trailing ``/`` and nothing redirects (the SDK never follows a redirect:
a path without its slash is a 404, not a 307); every route needs the ``X-Avala-Api-Key`` header, except the
OpenAPI schema (``/api/v1/openapi.json``) and its docs page (``/api/v1/docs/``): they show the API's shape, no
data, and the docs page's browser fetch of the schema cannot send the header. Every route declares its answer's
model and its errors (``server/schemas.py``); tests/test_server_openapi.py runs schemathesis over the schema.

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
from avala_infer.server.auth import ManagedKeys, require_key
from avala_infer.server.errors import install_error_handlers
from avala_infer.server.routes import (
    account,
    agents,
    auto_label,
    datasets,
    exports,
    projects,
    providers,
    tasks,
    webhooks,
)
from avala_infer.server.schemas import COMMON_ERRORS
from avala_infer.server.worker_process import DEFAULT_NICE, WorkerProcess
from avala_infer.version import __version__

API_PREFIX = "/api/v1"


WORKER_MODES = ("process", "thread", "none")


def create_app(
    home: str | os.PathLike,
    api_keys: Sequence[str],
    *,
    worker: bool | str = True,
    device: str = "auto",
    worker_nice: int = DEFAULT_NICE,
) -> FastAPI:
    """The app over the store in ``home``, accepting any of ``api_keys`` and the store's active managed
    keys (``avala-infer keys``; see ``server/auth.py``). The store is opened when the app starts
    (uvicorn's lifespan) and closed when it stops. ``worker`` says who runs the auto-label jobs (on ``device``)
    and sends the webhooks: ``"process"`` (what ``avala-infer serve`` does) an ``avala-infer worker`` child
    started with the app, ``worker_nice`` steps below the server's CPU priority (``server/worker_process.py``);
    ``"thread"`` (or True) threads of this process; ``"none"`` (or False) nobody here, for a host where
    ``avala-infer worker`` processes run them. Stopping the app stops the worker after its batch in flight (an
    unfinished job is resumed by the next worker)."""
    keys = [k for k in api_keys if k]  # none: the store's managed keys only (avala-infer keys create)
    mode = ("thread" if worker else "none") if isinstance(worker, bool) else str(worker)
    if mode not in WORKER_MODES:
        raise ConfigError(f"unknown worker mode {worker!r}; use one of {', '.join(WORKER_MODES)}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from avala_infer.client import Avala

        app.state.client = Avala(home=home, worker=mode == "thread", device=device)
        app.state.client.start_worker()  # jobs left by an earlier start (or queued by the CLI) run now
        child = WorkerProcess(home, device, nice=worker_nice).start() if mode == "process" else None
        try:
            yield
        finally:
            if child is not None:
                child.stop()
            app.state.client.close()
            app.state.managed_keys.close()

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
    app.state.managed_keys = ManagedKeys(home)  # and the store's managed keys, looked up on each request
    install_error_handlers(app)
    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_key)], responses=COMMON_ERRORS)
    for module in (account, projects, tasks, datasets, auto_label, agents, webhooks, exports, providers):
        api.include_router(module.router)
    app.include_router(api)
    return app


def serve(
    app: FastAPI, host: str, port: int, *, ssl_certfile: str | None = None, ssl_keyfile: str | None = None
) -> None:
    """Run ``app`` with uvicorn on ``host:port`` until SIGINT/SIGTERM; https with ``ssl_certfile`` (the PEM
    certificate chain) and ``ssl_keyfile`` (its private key), which ``avala-infer serve`` checks first."""
    uvicorn.run(app, host=host, port=port, log_level="warning", ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
