"""The embedded store: one SQLite file (WAL) under the home folder; the only code that writes SQL.

``Store(home)`` opens (and migrates) ``<home>/avala-infer.db``; a connection belongs to one thread.
"""

from avala_infer.store.agents import PULL_ACTIONS, AgentStore
from avala_infer.store.db import default_home
from avala_infer.store.events import EVENT_TYPES
from avala_infer.store.jobs import FINISHED, JOB_STATUSES, LeaseLost, worker_id


class Store(AgentStore):
    """Projects, datasets, items, tasks, jobs, results, agents, events, deliveries and executions."""


__all__ = [
    "EVENT_TYPES",
    "FINISHED",
    "JOB_STATUSES",
    "PULL_ACTIONS",
    "LeaseLost",
    "Store",
    "default_home",
    "worker_id",
]
