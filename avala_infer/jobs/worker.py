"""The worker: takes pending jobs (or running jobs whose worker died) one at a time and runs them; by default it
also runs a webhook dispatcher thread that delivers agents' events (see ``avala_infer.agents``).

``avala-infer worker`` runs one as a process; the Python client runs one on a thread by default. Several workers
may share a store: a job is held by one of them at a time (see ``store/jobs.py``). ``executor`` is where the
predictions are computed (``local``: this process; ``ray``: actors of a Ray cluster, see ``jobs/executors``);
either way this worker alone writes the store.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from avala_infer.errors import AvalaInferError
from avala_infer.jobs.executors import make_executor
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
        executor: str = "local",
        address: str | None = None,
        concurrency: int | None = None,
    ) -> None:
        self.executor = make_executor(executor, address=address, concurrency=concurrency)  # checked here, not later
        self.address = address  # for jobs created with executor="ray" when this worker's executor is local
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
        runners = {self.executor.name: self._runner(store, self.executor)}  # one per executor the jobs asked for
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
                name = job.get("executor") or self.executor.name  # a job created with executor= runs there
                if name not in runners:
                    try:
                        executor = make_executor(name, address=self.address if name == "ray" else None)
                    except AvalaInferError as exc:  # Ray not installed here: the job fails, saying so
                        log.error("job %s failed: %s", job["uid"], exc)
                        store.jobs.finish(job, self.id, "failed", error_message=str(exc))
                        ran += 1
                        continue
                    runners[name] = self._runner(store, executor)
                runners[name].run(job, self.stopping.is_set)
                ran += 1
        finally:
            if dispatcher is not None:
                dispatcher.stop()  # records the requests in flight; undelivered events stay pending
            for runner in runners.values():
                runner.close()  # frees its models; this worker id stops counting as live in this process
                runner.executor.close()  # a Ray driver leaves its cluster (which keeps running)
            store.close()
        return ran

    def _runner(self, store: Store, executor) -> JobRunner:
        return JobRunner(store, self.id, device=self.device, lease_s=self.lease_s, executor=executor)

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
