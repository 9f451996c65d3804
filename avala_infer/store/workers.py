"""Who holds a job's lease: worker ids (``host:pid:random``) and the workers alive in this process, so a claim
can tell a lease that must be waited out from one whose holder is gone (dead process on this host, or a runner of
this process that stopped)."""

from __future__ import annotations

import os
import socket
import threading

_live_workers: set[str] = set()  # the worker ids that hold (or may hold) jobs in this process now
_live_lock = threading.Lock()


def worker_id() -> str:
    """A new worker id: this host, this process, and a random part (two runners of one process differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def register_worker(worker: str) -> None:
    """Mark ``worker`` as live in this process: a claim made from this process then waits out its lease."""
    with _live_lock:
        _live_workers.add(worker)


def unregister_worker(worker: str) -> None:
    """``worker`` stopped: from now on its jobs are taken over at once by any worker on this host."""
    with _live_lock:
        _live_workers.discard(worker)


def holder_is_dead(worker: str | None) -> bool:
    """True when ``worker`` ran on this host and its process is gone (then its lease needs no waiting out).

    A holder with this process's pid is alive only while it is registered here (:func:`register_worker`): an
    id that is not is a runner of this process that stopped, or a process before a restart that reused the pid.
    """
    if not worker:
        return True
    host, _, rest = worker.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        with _live_lock:
            return worker not in _live_workers
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
