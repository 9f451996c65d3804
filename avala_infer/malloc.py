"""The glibc malloc settings model runs want, and when to leave malloc alone: the values the ``avala-infer`` model
commands restart with (``cli/allocator.py``, which says why). They must be in place before the process starts:
glibc reads them once. A leaf module, so the console script can restart before it imports anything else."""

from __future__ import annotations

import os
from collections.abc import Mapping

# freed blocks up to 64 GiB stay in the heap for reuse, no block is given its own mapping below that, one arena
SETTINGS = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(64 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(64 << 30),
}
OPT_OUT = "AVALA_INFER_MALLOC"  # "system": leave malloc as the environment set it
ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def on_glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError, AttributeError):  # not glibc, or no confstr on this platform
        return False


def malloc_left_alone(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` says to leave malloc as it is: the user's opt-out (``AVALA_INFER_MALLOC=system``), or
    their own malloc settings (any of :data:`SETTINGS`, ``GLIBC_TUNABLES`` with a ``glibc.malloc`` setting, an
    allocator in ``LD_PRELOAD``)."""
    if environ.get(OPT_OUT, "").strip().lower() == "system":
        return True
    if any(name in environ for name in SETTINGS):
        return True
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return True
    return any(name in environ.get("LD_PRELOAD", "") for name in ALLOCATORS)


def environment_for_models(environ: Mapping[str, str], glibc: bool) -> dict[str, str] | None:
    """The environment to restart with (``environ`` and :data:`SETTINGS`), or ``None`` to keep this process as
    it is: not glibc, or :func:`malloc_left_alone` (the restarted process itself has the settings, so it never
    restarts twice)."""
    if not glibc or malloc_left_alone(environ):
        return None
    return {**environ, **SETTINGS}
