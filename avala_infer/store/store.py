"""The :class:`Store`: one SQLite connection under the home folder, and the repositories that query it."""

from __future__ import annotations

from pathlib import Path

from avala_infer.store.agents import AgentRepository
from avala_infer.store.api_keys import ApiKeyRepository
from avala_infer.store.db import DB_NAME, connect
from avala_infer.store.events import EventRepository
from avala_infer.store.exports import ExportRepository
from avala_infer.store.items import ItemRepository
from avala_infer.store.jobs import JobRepository
from avala_infer.store.projects import ProjectRepository
from avala_infer.store.providers import ProviderRepository
from avala_infer.store.results import ResultRepository
from avala_infer.store.webhooks import WebhookRepository


class Store:
    """``<home>/avala-infer.db``, opened (created 0600, migrated) on construction, and its repositories over that
    one connection: ``projects``, ``items`` (datasets, items, tasks), ``jobs``, ``results``, ``agents`` and
    ``events`` (the outbox and push deliveries), e.g. ``store.projects.create("cars")``, ``store.jobs.claim(...)``.

    One ``Store`` per thread (connections are not shared across threads by the job runner; the client's
    in-process worker opens its own). A context manager: ``with Store(home) as store: ...`` closes the connection
    at the end of the block.
    """

    def __init__(self, home: str | Path) -> None:
        self.home = Path(home).expanduser()
        self.path = self.home / DB_NAME
        self.conn = connect(self.path)
        conn, path = self.conn, self.path
        self.events = EventRepository(conn, path)
        self.items = ItemRepository(conn, path, events=self.events)
        self.projects = ProjectRepository(conn, path, events=self.events, items=self.items)
        self.results = ResultRepository(conn, path, events=self.events, items=self.items)
        self.jobs = JobRepository(
            conn, path, events=self.events, projects=self.projects, items=self.items, results=self.results
        )
        self.agents = AgentRepository(conn, path, projects=self.projects, items=self.items)
        self.api_keys = ApiKeyRepository(conn, path)  # the server's managed keys, stored hashed
        self.exports = ExportRepository(conn, path, events=self.events, projects=self.projects, items=self.items)
        self.providers = ProviderRepository(conn, path, projects=self.projects)
        self.webhooks = WebhookRepository(conn, path, agents=self.agents)  # agents rows of kind 'webhook'

    def close(self) -> None:
        """Close the connection (the repositories cannot be used after)."""
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
