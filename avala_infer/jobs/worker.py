"""The worker: takes pending jobs (or running jobs whose worker died) one at a time and runs them; by default it
also runs a webhook dispatcher thread that delivers agents' events (see ``avala_infer.agents``).

``avala-infer worker`` runs one as a process; the Python client runs one on a thread by default. Several workers
may share a store: a job is held by one of them at a time (see ``store/jobs.py``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from avala_infer.jobs.runner import JobRunner
from avala_infer.store import Store, worker_id

log = logging.getLogger(__name__)


class Worker:
    def __init__(
        self,
        home: str | Path,
        *,
        device: str = "auto",
        lease_s: float = 60.0,
        poll_s: float = 1.0,
        dispatch: bool = True,
    ) -> None:
        self.home = Path(home)
        self.device = device
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.dispatch = dispatch  # also run a webhook dispatcher thread (its own connection; never blocks jobs)
        self.id = worker_id()
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self, *, until_idle: bool = False) -> int:
        """Run jobs until :meth:`stop` (or, with ``until_idle``, until no job is waiting); returns jobs run."""
        store = Store(self.home)  # this thread's own connection
        runner = JobRunner(store, self.id, device=self.device, lease_s=self.lease_s)
        ran = 0
        dispatcher = None
        if self.dispatch:
            from avala_infer.agents import Dispatcher

            dispatcher = Dispatcher(self.home).start()
        try:
            while not self.stopping.is_set():
                job = store.jobs.claim(self.id, self.lease_s)
                if job is None:
                    if until_idle:
                        break
                    self.stopping.wait(self.poll_s)
                    continue
                log.info("worker %s runs job %s (%s on %s)", self.id, job["uid"], job["model"], job["project_uid"])
                runner.run(job, self.stopping.is_set)
                ran += 1
        finally:
            if dispatcher is not None:
                dispatcher.stop()  # records the requests in flight; undelivered events stay pending
            runner.close()  # frees its models; this worker id stops counting as live in this process
            store.close()
        return ran

    def start(self) -> Worker:
        """Run on a daemon thread (the client's in-process worker). What goes wrong there is logged to the
        ``avala_infer`` logger, never printed: the user's script shows it only if it configures logging."""
        self._thread = threading.Thread(target=self._run_logged, name="avala-infer-worker", daemon=True)
        self._thread.start()
        return self

    def _run_logged(self) -> None:
        try:
            self.run()
        except Exception:  # else threading's excepthook prints a traceback to the user's stderr
            log.exception("job worker %s stopped (jobs wait for the next worker)", self.id)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Ask the worker to stop after the batch in flight (its job stays running, to be resumed) and wait."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
