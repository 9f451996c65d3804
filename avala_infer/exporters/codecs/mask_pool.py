"""A few threads that work through one item's masks at once: off by default, on with ``AVALA_INFER_MASK_THREADS``.

Tracing outlines (``cv2.findContours``) and finding runs (numpy over the mask) are most of a mask writer's time, and
OpenCV and numpy's larger loops release the GIL, so on a host with cores to spare an item with several instances
could cost about its longest mask rather than their sum. Measured, it does not pay on the 2-core VM we build on:
``bench_overhead.py``'s mask writers ran 1.4-2.2x slower with 2 threads than on the writer's own thread (a mask is
40-430 us of work, and each hand-over to another thread and back costs about 100 us there). So the default is 1
(each mask on the writer's thread, no pool); ``AVALA_INFER_MASK_THREADS=N`` shares an item's masks over N threads
(a GPU host with many idle cores: measure with ``bench_overhead.py``, which times the mask writers both ways).
Results come back in the masks' order and an error in one is raised to the caller, as the plain loop would: the
writers stay item-by-item, with nothing pending between two ``write`` calls.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from avala_infer.errors import ConfigError

THREADS_ENV = "AVALA_INFER_MASK_THREADS"


def threads_from_env(environ: dict[str, str] | None = None) -> int:
    """``AVALA_INFER_MASK_THREADS`` as a count of threads (1 when unset: no pool)."""
    value = (os.environ if environ is None else environ).get(THREADS_ENV, "").strip()
    if not value:
        return 1
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ConfigError(
            f"{THREADS_ENV} must be a whole number of threads, at least 1 (1: no pool), got {value!r}; unset it for "
            "the default"
        )
    return threads


# the threads an item's masks are shared over: None until the first item reads the environment (a bad value then
# fails that run, naming the variable, not the import); the benchmark sets it to time both ways
THREADS: int | None = None

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_threads = 0


def map_masks(function: Callable[[_Item], _Result], masks: Iterable[_Item]) -> list[_Result]:
    """``[function(mask) for mask in masks]``, the masks (or what stands for each: a mask and its extent) shared
    out over the pool's threads."""
    global THREADS
    masks = list(masks)
    if THREADS is None:
        THREADS = threads_from_env()
    threads = THREADS
    if threads < 2 or len(masks) < 2:
        return [function(mask) for mask in masks]
    return list(_executor(threads).map(function, masks))


def _executor(threads: int) -> ThreadPoolExecutor:
    """The process's pool of ``threads``, made on first use (and again for another size); a forked child makes its
    own (the parent's threads are not in it)."""
    global _pool, _pool_pid, _pool_threads
    with _lock:
        if _pool is None or _pool_pid != os.getpid() or _pool_threads != threads:
            if _pool is not None and _pool_pid == os.getpid():
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(threads, thread_name_prefix="avala-masks")
            _pool_pid, _pool_threads = os.getpid(), threads
        return _pool
