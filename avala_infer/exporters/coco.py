"""COCO detection JSON, streamed: images and annotations go to two scratch files as they arrive and are
joined into one ``annotations.coco.json`` at the end, so memory stays flat however many items flow.

Categories are the output labels with ids 1..N in vocabulary order; each annotation carries ``score``,
so the file loads as ground truth in pycocotools and as results through ``COCO.loadRes(file["annotations"])``.
Instance masks go in ``segmentation`` as COCO compressed RLE (pycocotools; ``mask_format="rle"``, the default,
lossless) or as polygons (``mask_format="polygon"``; a mask with a hole, which no polygon can hold, is written
as RLE all the same), with ``area`` the mask's area.

Semantic segmentation is written as COCO-Stuff writes it: one annotation per (image, class present), its
``segmentation`` the class's pixels (RLE or polygons as above), ``bbox`` their extent, ``area`` their count and
``score`` their mean probability.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from avala_infer.annotations import Prediction, SemanticMask
from avala_infer.errors import ConfigError
from avala_infer.exporters.base import remove_quietly
from avala_infer.exporters.codecs import instance_masks, rle
from avala_infer.exporters.codecs.number_text import rounded_texts
from avala_infer.exporters.codecs.polygons import mask_to_polygons

MASK_FORMATS = ("rle", "polygon")


def polygon_or_rle(mask, compressed_rle: dict) -> dict | list:
    """COCO polygons of ``mask`` when they hold it (no holes, at least one outline), else its RLE."""
    polygons, has_holes = mask_to_polygons(mask)
    if has_holes or not polygons:
        return compressed_rle
    return [[round(float(v), 2) for v in polygon.ravel()] for polygon in polygons]


# a record's segmentation while its polygons are printed apart: the one "segmentation" key of a record whose other
# values are numbers, so the first such text in its JSON
_POLYGONS_SLOT = '"segmentation": []'


def _polygons_json(outlines: tuple[list, bool]) -> str | None:
    """``json.dumps`` of :func:`polygon_or_rle`'s polygons, from the mask's ``mask_to_polygons``, printed by numpy
    (thousands of numbers an item), or ``None`` where it gives the RLE."""
    polygons, has_holes = outlines
    if has_holes or not polygons:
        return None
    return "[[" + "], [".join(rounded_texts([polygon.ravel() for polygon in polygons], 2)) + "]]"


def _record_json(record: dict, compressed_rle: dict, outlines: tuple[list, bool] | None) -> str:
    """``json.dumps(record)`` with ``segmentation`` set: ``compressed_rle``, or with ``outlines`` (the mask's
    ``mask_to_polygons``) its polygons where they hold it (as :func:`polygon_or_rle`)."""
    polygons = _polygons_json(outlines) if outlines is not None else None
    if polygons is None:
        record["segmentation"] = compressed_rle
        return json.dumps(record)
    record["segmentation"] = []
    return json.dumps(record).replace(_POLYGONS_SLOT, '"segmentation": ' + polygons, 1)


class CocoWriter:
    def __init__(self, out_dir: Path, labels: tuple[str, ...], mask_format: str = "rle") -> None:
        if mask_format not in MASK_FORMATS:
            raise ConfigError(f"mask_format {mask_format!r} is not one of {', '.join(MASK_FORMATS)}")
        self.mask_format = mask_format
        self.path = out_dir / "annotations.coco.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.categories = [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(labels)]
        self._images = self.path.with_name(self.path.name + ".images.part").open("w+", encoding="utf-8")
        try:
            self._annotations = self.path.with_name(self.path.name + ".annotations.part").open("w+", encoding="utf-8")
        except BaseException:
            self._images.close()
            remove_quietly(self._images.name)
            raise
        self._next_annotation = 1
        self._count_images = 0

    @staticmethod
    def _append(file, text: str, first: bool) -> None:
        file.write(("" if first else ",\n") + text)

    def write(self, prediction: Prediction) -> None:
        if not prediction.ok:
            return
        image_id = prediction.index + 1
        image = {
            "id": image_id,
            "file_name": prediction.key,
            "width": prediction.width,
            "height": prediction.height,
            "path": prediction.source,
        }
        self._append(self._images, json.dumps(image), self._count_images == 0)
        self._count_images += 1
        if isinstance(prediction.result, SemanticMask):
            self._write_segments(image_id, prediction.result)
            return
        d = prediction.detections
        runs = instance_masks.runs(d)  # each mask's area is in its runs
        size = list(d.mask.shape[1:]) if d.mask is not None else []
        rles = [rle.compress({"size": size, "counts": r}) for r in runs]
        outlines = instance_masks.outlines(d) if self.mask_format == "polygon" else [None] * len(runs)
        records = []
        # .tolist(): Python floats and ints, the same values float()/int() of each numpy element give
        for i, ((x1, y1, x2, y2), score, cid) in enumerate(
            zip(d.xyxy.tolist(), d.confidence.tolist(), d.class_id.tolist())
        ):
            w, h = x2 - x1, y2 - y1
            record = {
                "id": self._next_annotation + i,
                "image_id": image_id,
                "category_id": cid + 1,
                "bbox": [round(x1, 3), round(y1, 3), round(w, 3), round(h, 3)],
                "area": round(w * h, 3),
                "iscrowd": 0,
                "score": round(score, 5),
            }
            if d.mask is None:
                records.append(json.dumps(record))
                continue
            record["area"] = int(runs[i][1::2].sum())  # the set pixels: every second run
            records.append(_record_json(record, rles[i], outlines[i]))
        if records:  # one write per item: the records as _append would have joined them
            self._annotations.write(("" if self._next_annotation == 1 else ",\n") + ",\n".join(records))
            self._next_annotation += len(records)

    def _write_segments(self, image_id: int, semantic: SemanticMask) -> None:
        for segment in semantic.segments():
            compressed = rle.compress({"size": list(segment.mask.shape), "counts": rle.counts(segment.mask)})
            rows = np.flatnonzero(segment.mask.any(1))
            cols = np.flatnonzero(segment.mask.any(0))
            x, y = int(cols[0]), int(rows[0])
            record = {
                "id": self._next_annotation,
                "image_id": image_id,
                "category_id": segment.class_id + 1,
                "bbox": [x, y, int(cols[-1]) + 1 - x, int(rows[-1]) + 1 - y],
                "area": segment.area,
                "iscrowd": 0,
                "score": round(segment.confidence, 5),
            }
            outlines = mask_to_polygons(segment.mask) if self.mask_format == "polygon" else None
            text = _record_json(record, compressed, outlines)
            self._append(self._annotations, text, self._next_annotation == 1)
            self._next_annotation += 1

    def close(self) -> list[Path]:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with tmp.open("w", encoding="utf-8") as out:
                out.write('{"info": {"description": "avala-infer pre-annotations"},\n"categories": ')
                out.write(json.dumps(self.categories))
                for name, part in (("images", self._images), ("annotations", self._annotations)):
                    out.write(f',\n"{name}": [\n')
                    part.seek(0)
                    shutil.copyfileobj(part, out)
                    out.write("\n]")
                out.write("}\n")
            os.replace(tmp, self.path)
        finally:
            self.abort()  # the scratch files go, and the joined file if it was not renamed into place
            remove_quietly(tmp)
        return [self.path]

    def abort(self) -> None:
        for part in (self._images, self._annotations):
            part.close()
            remove_quietly(part.name)
