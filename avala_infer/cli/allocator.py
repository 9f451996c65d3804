"""glibc's malloc, set for model runs before the process starts: the commands that run models restart once, in
place, with ``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` in their environment.

Why: on a CPU, large models allocate and free activations of tens to hundreds of MB per image (SAM's image encoder
at 1024: a 64 MB attention map per head and layer). glibc maps each block over its mmap threshold (32 MB at most
when left to itself) fresh and unmaps it on free, and a thread's own arena cannot hold a block over 64 MB at all:
every page of every such block faults in again, on every image. Measured on this project's 2-core VM, SAM's
encoder on a thread: 250 ms an image, 143 ms of it in the kernel (66,000 faults); with these settings 100 ms and 2
ms (400 faults). ``avala-infer label`` with a YOLO -> SAM chain over 128 images: 36-37.5 s before, 24-28 s after
(with SAM's encoder taking one image at a time on a CPU); YOLO runs took as long or a little less (kernel time down
by a third).

Why a restart: the three settings only hold when they are in place before any thread allocates. glibc fixes the
number of arenas, and each thread's arena, at a thread's first allocation; ``mallopt`` later leaves threads that
already have an arena where they are (measured: 196 ms an image with it set after a thread pool had run, 97 ms
with the environment). So the console script execs itself (same pid, same arguments, same interpreter flags)
with the settings added, before it parses a command. Only the commands that run models do this (``label``,
``worker``, ``serve``, ``auto-label create --run``): the rest stay one quick process. The processes they start
(the server's job workers) inherit the settings.

The cost: memory a run has freed stays with the process for its next use (its resident size keeps its peak, as
with jemalloc or tcmalloc), all threads share one arena (their small allocations are served from per-thread caches
first), and chunked work can fragment the heap (100 masks of a 20 MP photo: 477 MB at the peak above the masks,
against 239 MB). ``AVALA_INFER_MALLOC=system`` leaves malloc as the environment set it. So does a user's own
choice: any of the three variables, ``GLIBC_TUNABLES`` with a ``glibc.malloc`` setting, or an allocator in
``LD_PRELOAD``. Not on glibc (macOS, musl), nothing changes. Code that imports avala-infer as a library gets
the same effect by starting Python with the variables of :data:`SETTINGS` set (:mod:`avala_infer.malloc`
holds them).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from avala_infer.malloc import (  # noqa: F401  (SETTINGS and OPT_OUT: this module's API, used by tests)
    OPT_OUT,
    SETTINGS,
    environment_for_models,
    on_glibc,
)

MODEL_COMMANDS = ("label", "worker", "serve")


def runs_models(args: Sequence[str]) -> bool:
    """Whether the command line ``args`` (``sys.argv[1:]``) names a command that runs models in this process.
    The command group's only options (``-v``, ``--version``, ``--help``) take no value, so the command is the
    first word that is not an option."""
    words = [arg for arg in args if not arg.startswith("-")]
    if not words:
        return False
    if words[0] in MODEL_COMMANDS:
        return True
    return words[:2] == ["auto-label", "create"] and "--run" in args


def restart_for_models(args: Sequence[str]) -> None:
    """Exec this interpreter again with :func:`environment_for_models` when ``args`` run models and the settings
    are not in place; returns (and the command runs here) otherwise, or when the exec cannot be made."""
    if not runs_models(args):
        return
    environment = environment_for_models(os.environ, on_glibc())
    if environment is None or not sys.executable or not getattr(sys, "orig_argv", None):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, environment)
    except OSError:  # an interpreter that cannot be exec'd again: run with malloc as it is
        return
