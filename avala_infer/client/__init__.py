"""The local ``Avala`` client: the cloud SDK's calls (``client.auto_label_jobs.create(...)``, ...) over the
embedded store, with a worker thread that runs the jobs.

>>> from avala_infer import Avala                                        # doctest: +SKIP
>>> client = Avala()                       # no API key; home from AVALA_INFER_HOME or ~/.local/share/avala-infer
>>> project = client.projects.create("streets", models={"object_detection": "yolo11n"})  # doctest: +SKIP
>>> client.projects.import_items(project.uid, ["images/"])                                 # doctest: +SKIP
>>> job = client.auto_label_jobs.create(project_uid=project.uid, model_type="object_detection",
...                                     confidence_threshold=0.5)                         # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from avala_infer.client.agent_types import Agent, AgentExecution
from avala_infer.client.agents import Agents, Results, WorkflowTasks
from avala_infer.client.resources import AutoLabelJobs, Datasets, Projects
from avala_infer.client.types import AutoLabelJob, CursorPage, Dataset, DatasetItem, Project, Task


class Avala:
    """A local client. ``api_key`` and ``base_url`` are accepted for compatibility with the cloud SDK and unused.

    ``home`` is the folder of the store (default ``AVALA_INFER_HOME`` or ``~/.local/share/avala-infer``).
    ``worker=True`` (the default) runs jobs on a background thread of this process on ``device``; pass
    ``worker=False`` when an ``avala-infer worker`` process runs them. Use as a context manager, or call
    :meth:`close`, to stop the worker (an unfinished job stays running and is resumed by the next worker).
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
        self._lock = threading.RLock()  # one connection, used from the caller's threads one call at a time
        self.projects = Projects(self)
        self.datasets = Datasets(self)
        self.tasks = WorkflowTasks(self)  # list/get/results, and complete/review/reject (the human side)
        self.agents = Agents(self)
        self.results = Results(self)
        self.auto_label_jobs = AutoLabelJobs(self)
        self._worker = None
        if worker:
            from avala_infer.jobs import Worker

            self._worker = Worker(self.home, device=device, poll_s=0.2).start()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
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
    "Project",
    "Task",
]
