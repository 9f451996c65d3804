"""The server's job worker as a child process: ``avala-infer worker`` (jobs and webhooks) at a lower CPU priority,
so the API's reads keep answering fast while a CPU job runs (measured by ``benchmarks/bench_api.py``: a worker
thread in the server's process shares its GIL and its cores, and p99 read latency grew past 100 ms; a child at
a lower priority gives the reads the CPU first, and costs a job nothing when the server is idle).

The child is started with the app and stopped with it (SIGTERM: it finishes its batch in flight, its job is
resumed by the next worker); it dies with the server if the server is killed (``PR_SET_PDEATHSIG`` on Linux);
one that exits on its own is started again after a pause.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_NICE = 10  # CPU priority below the server's (0); 19 is the lowest
RESTART_PAUSE_S = 5.0
_PR_SET_PDEATHSIG = 1


def _in_child(nice: int) -> None:
    """Runs in the child before exec: lower its priority, and ask Linux to SIGTERM it when the server dies."""
    if nice:
        os.nice(nice)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass  # without it, a killed server leaves the worker running: it still holds only leased work


class WorkerProcess:
    """``avala-infer worker --home HOME --device DEVICE`` as a supervised child of the server."""

    def __init__(self, home: str | os.PathLike, device: str = "auto", *, nice: int = DEFAULT_NICE) -> None:
        self.command = [
            sys.executable, "-m", "avala_infer.cli", "worker", "--home", str(Path(home)), "--device", device,
        ]  # fmt: skip
        self.nice = int(nice)
        self.process: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None

    def start(self) -> WorkerProcess:
        self._spawn()
        self._supervisor = threading.Thread(target=self._supervise, name="avala-infer-worker-supervisor", daemon=True)
        self._supervisor.start()
        return self

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self.process = subprocess.Popen(  # noqa: S603 (our own CLI, by the running interpreter)
                self.command, stdin=subprocess.DEVNULL, preexec_fn=lambda: _in_child(self.nice)
            )

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            process = self.process
            if process is not None and process.poll() is not None:
                log.error("the job worker (pid %d) exited with %s; starting it again", process.pid, process.returncode)
                if self._stopping.wait(RESTART_PAUSE_S):
                    return
                self._spawn()
            self._stopping.wait(0.5)

    def stop(self, timeout: float = 8.0) -> int | None:
        """SIGTERM the worker and wait up to ``timeout`` s for its batch in flight (then SIGKILL: its job stays
        leased until the lease runs out, and is resumed). Returns its exit status."""
        self._stopping.set()
        with self._lock:
            process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("the job worker did not stop within %.0f s; killing it", timeout)
                process.kill()
                process.wait()
        if self._supervisor is not None:
            self._supervisor.join(2.0)
        return process.returncode
