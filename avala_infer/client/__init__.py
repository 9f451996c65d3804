"""The local ``Avala`` client: the cloud SDK's calls (``client.auto_label_jobs.create(...)``, ...) over the
embedded store, with a worker thread that runs the jobs and a dispatcher thread that sends agents' webhooks,
each started only when first needed (constructing a client starts nothing).

>>> from avala_infer import Avala                                        # doctest: +SKIP
>>> client = Avala()                       # no API key; home from AVALA_INFER_HOME or ~/.local/share/avala-infer
>>> project = client.projects.create("streets", models={"object_detection": "yolo11n"})  # doctest: +SKIP
>>> client.projects.import_items(project.uid, ["images/"])                                 # doctest: +SKIP
>>> job = client.auto_label_jobs.create(project_uid=project.uid, model_type="object_detection",
...                                     confidence_threshold=0.5)                         # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

from avala_infer.client.account import Organization, Organizations, User, Users
from avala_infer.client.agent_types import Agent, AgentExecution
from avala_infer.client.agents import Agents, Results, WorkflowTasks
from avala_infer.client.exports import Export, Exports
from avala_infer.client.providers import InferenceProvider, InferenceProviders
from avala_infer.client.resources import AutoLabelJobs, Datasets, Projects
from avala_infer.client.types import AutoLabelJob, CursorPage, Dataset, DatasetItem, Project, Task
from avala_infer.client.webhooks import Webhook, WebhookDeliveries, WebhookDelivery, Webhooks


class _StoreLock:
    """The client's lock around its one store connection (resources take it for every call: ``with
    client._lock``), which also notices writes: when the outermost holder lets go and this connection has
    changed rows since the last look (``sqlite3.Connection.total_changes``; reads change none), it calls
    ``on_write``."""

    def __init__(self, client: Avala) -> None:
        self._lock = threading.RLock()
        self._client = client
        self._depth = 0
        self._changes = client._store.conn.total_changes  # the migrations of the open are not this client's

    def __enter__(self) -> _StoreLock:
        self._lock.acquire()
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._depth -= 1
            if self._depth == 0:
                changes = self._client._store.conn.total_changes
                if changes != self._changes:
                    self._changes = changes
                    self._client._on_write()
        finally:
            self._lock.release()


class _AutoLabelJobs(AutoLabelJobs):
    """``client.auto_label_jobs``: creating a job, or waiting on one, starts the client's worker thread."""

    @functools.wraps(AutoLabelJobs.create)
    def create(self, *args, **kwargs) -> AutoLabelJob:
        job = super().create(*args, **kwargs)
        self._client._ensure_worker()
        return job

    @functools.wraps(AutoLabelJobs.wait)
    def wait(self, *args, **kwargs) -> AutoLabelJob:
        self._client._ensure_worker()
        return super().wait(*args, **kwargs)


class Avala:
    """A local client. ``api_key`` and ``base_url`` are accepted for compatibility with the cloud SDK and unused.

    ``home`` is the folder of the store (default ``AVALA_INFER_HOME`` or ``~/.local/share/avala-infer``).
    ``worker=True`` (the default) runs jobs on a background thread of this process on ``device``, and agents'
    webhooks on another; pass ``worker=False`` when an ``avala-infer worker`` (or ``dispatcher``) process runs
    them. Both threads start only when needed: the worker on the first ``auto_label_jobs.create`` or ``.wait``,
    the dispatcher with it or on the first call of this client that writes to the store (an import, a project
    or agent change, a task or result action: what can cause an event). Constructing a client, and a script that
    only reads, start no thread and never post a webhook. Use as a context manager, or call :meth:`close`, to
    stop them (an unfinished job stays running and is resumed by the next worker; undelivered events stay
    pending).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        home: str | os.PathLike | None = None,
        base_url: str | None = None,
        worker: bool = True,
        device: str = "auto",
        timeout: float = 30.0,
        max_retries: int = 2,
    ) -> None:
        from avala_infer.store import Store, default_home

        self.home = Path(home).expanduser() if home is not None else default_home()
        self._store = Store(self.home)
        self._lock = _StoreLock(self)  # one connection, used from the caller's threads one call at a time
        self.projects = Projects(self)
        self.datasets = Datasets(self)
        self.tasks = WorkflowTasks(self)  # list/get/results, and complete/review/reject (the human side)
        self.agents = Agents(self)
        self.webhooks = Webhooks(self)  # subscriptions: push agents listed apart, as the cloud SDK's
        self.webhook_deliveries = WebhookDeliveries(self)
        self.results = Results(self)
        self.auto_label_jobs = _AutoLabelJobs(self)
        self.organizations = Organizations(self)  # the one local organization (the SDK's; for `avala configure`)
        self.users = Users(self)  # users.me(): the local user
        self.exports = Exports(self)  # written in the background to <home>/exports/<uid>/
        self.inference_providers = InferenceProviders(self)  # our models, as the SDK's providers
        self._background = worker  # run jobs and webhooks on threads of this process, when needed
        self._device = device
        self._starting = threading.Lock()
        self._worker = None
        self._dispatcher = None

    def _ensure_worker(self) -> None:
        """Start the job worker thread (and the dispatcher) unless it runs already or ``worker=False``."""
        if not self._background:
            return
        with self._starting:
            if self._worker is None:
                from avala_infer.jobs import Worker

                # the worker's events (results, auto_label.*) are sent by this client's dispatcher, not its own
                self._worker = Worker(self.home, device=self._device, poll_s=0.2, dispatch=False).start()
        self._ensure_dispatcher()

    def start_worker(self) -> None:
        """Start the job worker thread and the webhook dispatcher now, not on the first job created (the server
        does, so that jobs left pending or unfinished by an earlier process resume at once); a no-op with
        ``worker=False``, after :meth:`close`, or when they run already."""
        self._ensure_worker()

    def _ensure_dispatcher(self) -> None:
        """Start the webhook dispatcher thread unless it runs already or ``worker=False``."""
        if not self._background:
            return
        with self._starting:
            if self._dispatcher is None:
                from avala_infer.agents import Dispatcher

                self._dispatcher = Dispatcher(self.home).start()

    def _on_write(self) -> None:
        """This client wrote to the store (perhaps an event): its deliveries need a dispatcher."""
        self._ensure_dispatcher()

    def close(self) -> None:
        """Stop the worker (after its batch in flight) and the dispatcher (after its requests in flight)."""
        with self._starting:
            worker, dispatcher = self._worker, self._dispatcher
            self._worker = self._dispatcher = None
            self._background = False  # a closed client starts nothing more
        if worker is not None:
            worker.stop()
        if dispatcher is not None:
            dispatcher.stop()
        self._store.close()

    def __enter__(self) -> Avala:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = [
    "Agent",
    "AgentExecution",
    "AutoLabelJob",
    "Avala",
    "CursorPage",
    "Dataset",
    "DatasetItem",
    "Export",
    "InferenceProvider",
    "Organization",
    "Project",
    "Task",
    "User",
    "Webhook",
    "WebhookDelivery",
]
