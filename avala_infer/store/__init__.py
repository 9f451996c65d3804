"""The embedded store: one SQLite file (WAL) under the home folder; the only code that writes SQL.

``Store(home)`` opens (and migrates) ``<home>/avala-infer.db``; a connection belongs to one thread. It holds one
repository per table family over that connection (``store.projects``, ``store.items``, ``store.jobs``,
``store.results``, ``store.agents``, ``store.events``); each can also be built alone over any migrated connection
(``avala_infer.store.db.connect``). It is a context manager: ``with Store(home) as store: ...`` closes it.
"""

from avala_infer.store.agents import PULL_ACTIONS
from avala_infer.store.db import default_home
from avala_infer.store.events import EVENT_TYPES
from avala_infer.store.jobs import FINISHED, JOB_STATUSES, LeaseLost
from avala_infer.store.store import Store
from avala_infer.store.workers import register_worker, unregister_worker, worker_id

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
