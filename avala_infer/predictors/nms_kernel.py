"""torchvision's NMS kernel without importing the torchvision package.

``torchvision.ops.nms`` checks its input and calls ``torch.ops.torchvision.nms``, a C++ operator that torchvision's
compiled extension registers with torch when it is loaded. Importing ``torchvision`` itself also imports its model
zoo and, through ``torchvision.ops``, ``torch._dynamo``: about 2 s of every YOLO run's start-up on this project's
VM, for one function (``avala-infer label`` on one image: 4.7-4.9 s with it, 2.5-3.1 s without). So the detectors
load that extension alone (``torch.ops.load_library``, as torchvision's own ``extension`` module does) and call the
operator: the same kernel, the same results. When the extension cannot be found or loaded that way (another
layout, another platform's loader rules), the torchvision package is imported, which loads it its own way, or says
what is wrong.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import threading
from pathlib import Path
from typing import Any

from avala_infer.errors import BackendUnavailableError

# the extension's name in torchvision >= 0.29 (stable ABI), then in the versions before
EXTENSION_NAMES = ("_C_stable", "_C")
_lock = threading.Lock()
_kernel: Any = None


def extension_path() -> Path | None:
    """The torchvision extension that registers its operators, found without running torchvision's
    ``__init__``; ``None`` when torchvision is not installed or keeps it elsewhere."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    for name in EXTENSION_NAMES:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
    return None


def _load() -> Any:
    import torch

    path = extension_path()
    if path is not None:
        try:
            torch.ops.load_library(str(path))
            return torch.ops.torchvision.nms
        except (OSError, RuntimeError, AttributeError):
            pass  # the package's own loader below
    try:
        import torchvision
    except ImportError as exc:
        raise BackendUnavailableError(f"NMS needs torchvision: pip install torchvision ({exc})") from exc
    return torchvision.ops.nms


def nms(boxes: Any, scores: Any, iou_threshold: float) -> Any:
    """``torchvision.ops.nms(boxes, scores, iou_threshold)``: the indices of the boxes kept, by descending score."""
    global _kernel
    if _kernel is None:
        with _lock:
            if _kernel is None:
                _kernel = _load()
    return _kernel(boxes, scores, iou_threshold)
