"""A few threads that work through one item's masks at once.

Tracing outlines (``cv2.findContours``) and finding runs (numpy over the mask) are most of a mask writer's time and
release the GIL, so an item with several instances costs about its longest mask, not their sum, where the host
has cores to spare (a GPU host has; the writers run on their own thread beside the engine's). Results come back in
the masks' order and an error in one is raised to the caller, as the plain loop would: the writers stay
item-by-item, with nothing pending between two ``write`` calls.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

THREADS = min(4, os.cpu_count() or 1)  # an item rarely has more instances worth splitting than this

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0


def map_masks(function: Callable[[_Item], _Result], masks: Iterable[_Item]) -> list[_Result]:
    """``[function(mask) for mask in masks]``, the masks (or what stands for each: a mask and its extent) shared
    out over the pool's threads."""
    masks = list(masks)
    if THREADS < 2 or len(masks) < 2:
        return [function(mask) for mask in masks]
    return list(_executor().map(function, masks))


def _executor() -> ThreadPoolExecutor:
    """The process's pool, made on first use; a forked child makes its own (the parent's threads are not in it)."""
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="avala-masks")
            _pool_pid = os.getpid()
        return _pool
