"""The CUDA out-of-memory error the adaptive-batch tests simulate on a CPU (tests/test_adaptive_batch.py,
tests/test_devices.py, tests/test_pipeline_stages.py): what torch raises on a GPU, so the engine's own
``except torch.cuda.OutOfMemoryError`` path runs."""

from __future__ import annotations

from collections.abc import Callable, Sized

import torch


def cuda_out_of_memory(what: str) -> torch.cuda.OutOfMemoryError:
    """The error torch raises when an allocation does not fit, its message worded as torch words it."""
    return torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {what}")


def out_of_memory_above(capacity: int) -> Callable[[Sized], torch.cuda.OutOfMemoryError | None]:
    """``error(batch)``: the out-of-memory error for a batch of more than ``capacity`` items, else ``None`` (a
    device that "holds" ``capacity`` items at most)."""

    def error(batch: Sized) -> torch.cuda.OutOfMemoryError | None:
        if len(batch) > capacity:
            return cuda_out_of_memory(f"a batch of {len(batch)}")
        return None

    return error
