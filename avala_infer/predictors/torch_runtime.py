"""Launch cost of the torch backends: cuDNN autotuning and ``torch.compile`` (CUDA graphs), both for fixed shapes.

A yolo11n batch launches ~250 kernels; on a GPU the launches, not the arithmetic, set the pace of small models.
``torch.compile`` fuses kernels, and its ``reduce-overhead`` mode records each input shape's launches once as a
CUDA graph and replays it (one launch). Both pay per input shape (a compile: tens of seconds; a cuDNN trial: a
few batches' time), so they pay off with square letterboxing (one shape, the CUDA default), not with rect's ~14.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# torch.compile modes that replay CUDA graphs on CUDA: their outputs live in a pool the next replay overwrites
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def enable_cudnn_autotune(device: str, fixed_shapes: bool) -> bool:
    """On CUDA with one input shape, let cuDNN try its convolution algorithms once and keep the fastest
    (``torch.backends.cudnn.benchmark``; process-wide, never turned off again). Whether it is on now."""
    import torch

    if device.startswith("cuda") and fixed_shapes and not torch.backends.cudnn.benchmark:
        torch.backends.cudnn.benchmark = True
        log.info("cudnn.benchmark on: the fastest convolution for the input shape is found on its first batch")
    return bool(torch.backends.cudnn.benchmark)


def compile_module(module: Any, mode: str | None) -> Any:
    """``module`` compiled with ``torch.compile(mode=mode)`` (its first call per input shape compiles), or
    ``module`` itself when ``mode`` is ``None``. ``dynamic=False``: one specialised graph per shape, which CUDA
    graphs need anyway."""
    if mode is None:
        return module
    import torch

    log.info("torch.compile(mode=%r): the first batch of each input shape compiles (tens of seconds)", mode)
    return torch.compile(module, mode=mode, dynamic=False)


def replays_cuda_graphs(mode: str | None, device: str) -> bool:
    """Whether a module compiled in ``mode`` replays CUDA graphs on ``device``."""
    return device.startswith("cuda") and mode in CUDA_GRAPH_MODES


def mark_graph_step() -> None:
    """Tell CUDA graph trees a new inference step begins (before each call of a CUDA-graph module)."""
    import torch

    torch.compiler.cudagraph_mark_step_begin()


def copy_out(outputs: Any) -> Any:
    """``outputs`` (a tensor, or tuples of them) copied out of a CUDA graph's memory pool: the next replay
    overwrites the pool, and the engine may still be reading this batch's outputs then."""
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(copy_out(o) for o in outputs)
    return outputs.clone() if hasattr(outputs, "clone") else outputs


def queued_to_device(tensor: Any, device: Any) -> Any:
    """A host ``tensor`` on ``device``: on a GPU through pinned memory, queued on the current stream (a copy from
    pageable memory would wait for the device's queued work), so it overlaps what the device is doing."""
    if str(device) == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def stacked_on_device(tensors: Any, device: str, fp16: bool) -> Any:
    """One batch tensor of equally shaped CPU tensors, on ``device`` in the model's precision: on a GPU stacked
    into pinned memory and queued to the device on the current stream (a collate stage's side stream), so the
    copy overlaps the forward pass of the batch before."""
    import torch

    batch = queued_to_device(torch.stack(list(tensors)), device)
    return batch.half() if fp16 else batch.float()
