"""Class-map PNGs for semantic segmentation: ``masks/<key>.png``, one per image at its original size.

Pixel value ``k + 1`` is the run's label ``k`` (the same ids as the COCO export's categories) and 0 is no class
(below the threshold or filtered out); 8-bit for up to 255 labels, else 16-bit. ``masks/classes.txt`` lists
``id name`` lines, ``0 unlabeled`` first. Paths come from keys through ``base.PathAllocator``: inside
``masks/`` whatever the key, and two keys that would share a PNG (``a.jpg``, ``a.png``) get ``a.png``, ``a_1.png``.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from avala_infer.annotations import Prediction, SemanticMask
from avala_infer.exporters.base import Folders, PathAllocator, write_bytes_atomic, write_text_atomic


class MaskWriter:
    def __init__(self, out_dir: Path, labels: tuple[str, ...]) -> None:
        self.root = out_dir / "masks"
        self.root.mkdir(parents=True, exist_ok=True)
        self.labels = labels
        self.dtype = np.uint8 if len(labels) < 256 else np.uint16
        self._paths = PathAllocator(self.root)
        self._paths.allocate("classes.txt")  # written at close
        self._folders = Folders()  # sub-folders of nested keys, made once each

    def write(self, prediction: Prediction) -> None:
        if not prediction.ok or not isinstance(prediction.result, SemanticMask):
            return
        relative = self._paths.allocate_relative(prediction.key, ".png")
        path = os.path.join(self.root, relative)
        if "/" in relative:
            self._folders.make(os.path.dirname(path))
        values = (prediction.result.class_map + 1).astype(self.dtype)
        encoded, png = cv2.imencode(".png", values)
        if not encoded:
            raise OSError(f"cannot encode the mask of {prediction.key} as a PNG")
        write_bytes_atomic(path, png.tobytes())  # whole or not at all

    def abort(self) -> None:
        """Nothing is open: the PNGs written so far stay, ``classes.txt`` is not written."""

    def close(self) -> list[Path]:
        classes = self.root / "classes.txt"
        lines = ["0 unlabeled"] + [f"{i + 1} {name}" for i, name in enumerate(self.labels)]
        write_text_atomic(classes, "\n".join(lines) + "\n")
        return [self.root]
