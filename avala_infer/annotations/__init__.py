"""Result types: parallel numpy arrays, validated, bool-indexable, ``empty()`` instead of ``None``."""

from avala_infer.annotations.classes import Classifications
from avala_infer.annotations.detections import Detections
from avala_infer.annotations.entities import Entities
from avala_infer.annotations.prediction import Prediction, Result
from avala_infer.annotations.semantic import UNLABELED, SemanticMask

__all__ = ["UNLABELED", "Classifications", "Detections", "Entities", "Prediction", "Result", "SemanticMask"]
