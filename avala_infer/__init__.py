"""avala-infer: a local auto-labeling inference engine.

``import avala_infer`` imports no torch: :class:`Engine` and :func:`label` load their backends on first use.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from avala_infer.errors import (
    AvalaInferError,
    BackendUnavailableError,
    ConfigError,
    ItemError,
    ModelLoadError,
    ModelSpecError,
    UnknownLabelError,
    UnknownModelError,
    UnsupportedInputError,
    WeightsNotFoundError,
)
from avala_infer.types import ModelType, Text

if TYPE_CHECKING:
    from avala_infer.annotations import Classifications, Detections, Entities, Prediction, SemanticMask
    from avala_infer.client import Avala
    from avala_infer.engine import Engine
    from avala_infer.labeling import LabelReport, label

from avala_infer.version import __version__

# the library convention: avala-infer logs to the "avala_infer" logger and prints nothing itself; without this,
# logging's lastResort would print its warnings (a job worker thread's, say) to the stderr of a user's script
logging.getLogger("avala_infer").addHandler(logging.NullHandler())

__all__ = [
    "Avala",
    "AvalaInferError",
    "BackendUnavailableError",
    "Classifications",
    "ConfigError",
    "Detections",
    "Entities",
    "Engine",
    "ItemError",
    "LabelReport",
    "ModelLoadError",
    "ModelSpecError",
    "ModelType",
    "Prediction",
    "SemanticMask",
    "Text",
    "UnknownLabelError",
    "UnknownModelError",
    "UnsupportedInputError",
    "WeightsNotFoundError",
    "__version__",
    "label",
]

# imported on first use: the result types import numpy, and the console script restarts (``cli/allocator.py``)
# before it imports more than it must
_LAZY = {
    "Avala": "avala_infer.client",
    "Classifications": "avala_infer.annotations",
    "Detections": "avala_infer.annotations",
    "Entities": "avala_infer.annotations",
    "Prediction": "avala_infer.annotations",
    "SemanticMask": "avala_infer.annotations",
    "Engine": "avala_infer.engine",
    "label": "avala_infer.labeling",
    "LabelReport": "avala_infer.labeling",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'avala_infer' has no attribute {name!r}")
