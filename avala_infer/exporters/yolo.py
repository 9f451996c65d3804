"""YOLO txt: an ultralytics-readable dataset folder.

``yolo/labels/<key>.txt`` (``class cx cy w h`` normalised, one line per box; ``+ score`` with
``save_conf``), ``yolo/images/<key>`` symlinks to the sources (ultralytics finds labels by swapping
``images`` for ``labels`` in an image path), ``classes.txt`` and a ``data.yaml`` naming them, so
``YOLO(...).val(data="yolo/data.yaml")`` and training read it as it is. Instance masks are written as
YOLO-seg lines instead (``class x1 y1 x2 y2 ...``, normalised), one polygon per instance: the mask's largest
outline, as ultralytics keeps one segment per box.

Paths come from item keys through ``base.PathAllocator``: they stay inside ``yolo/`` whatever the key
(``../x.jpg`` -> ``x.jpg``), nested keys keep their sub-folders, and two keys that would share a label file
(``a.jpg`` and ``a.png``) get ``a.txt`` and ``a_1.txt``, their image links ``a.jpg`` and ``a_1.png``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

from avala_infer.annotations import Prediction
from avala_infer.exporters.base import PathAllocator, write_text_atomic
from avala_infer.exporters.codecs.polygons import largest_polygon


class YoloWriter:
    def __init__(self, out_dir: Path, labels: tuple[str, ...], save_conf: bool = False) -> None:
        self.root = out_dir / "yolo"
        self.labels = labels
        self.save_conf = save_conf
        (self.root / "labels").mkdir(parents=True, exist_ok=True)
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        self._paths = PathAllocator(self.root / "labels")

    def write(self, prediction: Prediction) -> None:
        if not prediction.ok:
            return
        linked = not prediction.source.startswith("<")  # in-memory arrays have no file to link
        image_suffix = (Path(prediction.source).suffix or ".jpg") if linked else None
        label_path = self._paths.allocate(prediction.key, ".txt", companion=image_suffix)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        d, w, h = prediction.detections, prediction.width, prediction.height
        lines = []
        for i, ((x1, y1, x2, y2), score, cid) in enumerate(zip(d.xyxy, d.confidence, d.class_id)):
            if d.mask is not None:
                polygon = largest_polygon(d.mask[i])
                if polygon is None:
                    continue
                fields = [f"{v:.6f}" for v in (polygon / np.array([w, h], np.float32)).ravel()]
            else:
                fields = [
                    f"{(x1 + x2) / 2 / w:.6f}",
                    f"{(y1 + y2) / 2 / h:.6f}",
                    f"{(x2 - x1) / w:.6f}",
                    f"{(y2 - y1) / h:.6f}",
                ]
            lines.append(" ".join([str(int(cid)), *fields, *([f"{score:.5f}"] if self.save_conf else [])]))
        write_text_atomic(label_path, "".join(line + "\n" for line in lines))  # whole or not at all
        if image_suffix is not None:
            relative = label_path.relative_to(self.root / "labels")
            image_path = (self.root / "images" / relative).with_suffix(image_suffix)
            image_path.parent.mkdir(parents=True, exist_ok=True)
            if image_path.is_symlink() or image_path.exists():
                image_path.unlink()
            os.symlink(Path(prediction.source).resolve(), image_path)

    def abort(self) -> None:
        """Nothing is open: the label files written so far stay, ``classes.txt`` and ``data.yaml`` are not
        written."""

    def close(self) -> list[Path]:
        classes = self.root / "classes.txt"
        write_text_atomic(classes, "".join(name + "\n" for name in self.labels))
        data = self.root / "data.yaml"
        names = dict(enumerate(self.labels))
        write_text_atomic(
            data,
            yaml.safe_dump(
                {"path": str(self.root.resolve()), "train": "images", "val": "images", "names": names}, sort_keys=False
            ),
        )
        return [self.root / "labels", classes, data]
