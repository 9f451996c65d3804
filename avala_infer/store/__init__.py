"""The embedded store: one SQLite file (WAL) under the home folder; the only code that writes SQL.

``Store(home)`` opens (and migrates) ``<home>/avala-infer.db``; a connection belongs to one thread. It is a context
manager: ``with Store(home) as store: ...`` closes it.
"""

from avala_infer.store.agents import PULL_ACTIONS, AgentStore
from avala_infer.store.db import default_home
from avala_infer.store.events import EVENT_TYPES
from avala_infer.store.jobs import (
    FINISHED,
    JOB_STATUSES,
    LeaseLost,
    register_worker,
    unregister_worker,
    worker_id,
)


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
    "register_worker",
    "unregister_worker",
    "worker_id",
]
