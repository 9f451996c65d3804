"""Result types: parallel numpy arrays, validated, bool-indexable, ``empty()`` instead of ``None``."""

from avala_infer.annotations.detections import Detections
from avala_infer.annotations.prediction import Prediction

__all__ = ["Detections", "Prediction"]
