"""The embedded store: one SQLite file (WAL) under the home folder; the only code that writes SQL.

``Store(home)`` opens (and migrates) ``<home>/avala-infer.db``; a connection belongs to one thread.
"""

from avala_infer.store.db import default_home
from avala_infer.store.jobs import FINISHED, JOB_STATUSES, JobStore, LeaseLost, worker_id


class Store(JobStore):
    """Projects, datasets, items, tasks, jobs and results."""


__all__ = ["FINISHED", "JOB_STATUSES", "LeaseLost", "Store", "default_home", "worker_id"]
