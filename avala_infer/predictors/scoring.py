"""Class scores from logits: softmax over classes, or an independent sigmoid per class.

Shared by every family that turns logits into scores (image classification, text classification, NER); each
is defined once here.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32, as the transformers pipelines compute it."""
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The logistic function, element by element."""
    return 1.0 / (1.0 + np.exp(-logits))


def scores_from_logits(logits: Any, multi_label: bool) -> np.ndarray:
    """Softmax over classes (single-label) or a sigmoid per class of a torch tensor ``(B, C)``, as float32
    numpy ``(B, C)`` on the host."""
    logits = logits.float()
    scores = logits.sigmoid() if multi_label else logits.softmax(-1)
    return scores.cpu().numpy()
