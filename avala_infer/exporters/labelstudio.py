"""Label Studio pre-annotations: one JSON list of tasks, each with a ``predictions`` entry, and the labeling
config that reads them.

Results, as Label Studio's import format documents them (coordinates in percent of the original image):

- boxes: ``rectanglelabels``; instance masks: ``polygonlabels``, one result per outline of the mask (ids
  ``<item>-<instance>-<part>``; holes are not kept: Label Studio polygons cannot hold them);
- semantic segmentation: ``brushlabels``, one result per class present, the mask in Label Studio's own brush
  RLE (``value.format = "rle"``; see ``exporters/codecs/brush_rle.py``);
- image and text classification: one ``choices`` result (the best class; every class kept for multi-label);
- named entities: ``labels`` results with ``start``, ``end`` and ``text`` (character offsets into the text).

``from_name``/``to_name`` follow Label Studio's templates: ``label`` for rectangles, polygons and entity
labels, ``tag`` for brushes, ``choice`` for classes; ``image`` or ``text`` for the object. Text tasks hold
``data.text``. Image tasks hold ``data.image``, a URL Label Studio can load (:class:`ImageUrls`):

- ``root`` (``--ls-root DIR``): ``/data/local-files/?d=<path relative to DIR>``, Label Studio's local-files
  convention (start it with ``LOCAL_FILES_SERVING_ENABLED=true`` and ``LOCAL_FILES_DOCUMENT_ROOT=DIR``, and add
  a Local files source storage under DIR to the project);
- ``url_prefix`` (``--ls-url-prefix URL``): ``URL/<path relative to the root>`` (the root defaults to the
  current folder), for images served by any web server;
- neither: the image's file path, as before (Label Studio cannot load it; for scripts that rewrite it).

Relative paths are URL-quoted (``/`` kept). An image outside the root is a :class:`ConfigError` naming the root.
``labelstudio.config.xml`` beside the JSON is a labeling config with these names and the run's labels: paste it
into the project's settings, then import ``labelstudio.json``. Streamed item by item.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np

from avala_infer.annotations import Classifications, Detections, Entities, Prediction, SemanticMask
from avala_infer.errors import ConfigError
from avala_infer.exporters.base import remove_quietly
from avala_infer.exporters.codecs import brush_rle, instance_masks
from avala_infer.exporters.codecs.number_text import rounded_row_texts
from avala_infer.types import ModelType, Text

LOCAL_FILES_URL = "/data/local-files/?d="


class ImageUrls:
    """What an image task's ``data.image`` holds: see the module docstring. Callable on a source path."""

    def __init__(self, root: str | os.PathLike | None = None, url_prefix: str | None = None) -> None:
        if url_prefix is not None and not str(url_prefix).strip():
            raise ConfigError("the Label Studio URL prefix is empty; give the URL that serves the root folder")
        self.url_prefix = str(url_prefix).rstrip("/") if url_prefix is not None else None
        self.root = None if root is None and url_prefix is None else Path(os.path.abspath(root or os.curdir))
        if self.root is not None and not self.root.is_dir():
            raise ConfigError(f"the Label Studio root {self.root} is not a folder; give the folder Label Studio serves")

    @property
    def active(self) -> bool:
        return self.root is not None

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` relative to the root (as given, else with links resolved); a path outside it is an error."""
        assert self.root is not None
        for candidate, root in (
            (Path(os.path.abspath(path)), self.root),
            (Path(os.path.realpath(path)), Path(os.path.realpath(self.root))),
        ):
            if candidate.is_relative_to(root):
                return candidate.relative_to(root).as_posix()
        raise ConfigError(
            f"{path} is outside the Label Studio root {self.root}: Label Studio serves only files under it; "
            "pass a --ls-root (ls_root=) that holds every image"
        )

    def __call__(self, source: str) -> str:
        if self.root is None:
            return source
        relative = quote(self.relative(source), safe="/")
        return f"{self.url_prefix}/{relative}" if self.url_prefix is not None else LOCAL_FILES_URL + relative

    def check_sources(self, sources: Iterable) -> None:
        """Before any work: every file, folder or glob named must lie under the root (and be a file at all)."""
        if self.root is None:
            return
        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        for source in sources:
            if isinstance(source, Text):
                continue
            if not isinstance(source, (str, os.PathLike)):
                raise ConfigError(
                    "an in-memory image has no file Label Studio can serve; give image files under the Label Studio "
                    f"root {self.root}"
                )
            text = os.fspath(source)
            fixed = Path(text).expanduser().parts
            cut = next((i for i, part in enumerate(fixed) if set("*?[") & set(part)), len(fixed))
            self.relative(Path(*fixed[:cut]) if cut else Path(os.curdir))


# (control tag, its name, the object it labels) per model type
CONTROLS = {
    ModelType.OBJECT_DETECTION: ("RectangleLabels", "label", "image"),
    ModelType.INSTANCE_SEGMENTATION: ("PolygonLabels", "label", "image"),
    ModelType.SEMANTIC_SEGMENTATION: ("BrushLabels", "tag", "image"),
    ModelType.IMAGE_CLASSIFICATION: ("Choices", "choice", "image"),
    ModelType.TEXT_CLASSIFICATION: ("Choices", "choice", "text"),
    ModelType.NAMED_ENTITY_RECOGNITION: ("Labels", "label", "text"),
}


def labeling_config(model_type: ModelType, labels: tuple[str, ...], multi_label: bool = False) -> str:
    """A Label Studio labeling config whose names match the results this writer produces."""
    control, name, target = CONTROLS[model_type]
    obj = '<Image name="image" value="$image"/>' if target == "image" else '<Text name="text" value="$text"/>'
    item = "Choice" if control == "Choices" else "Label"
    choice = f' choice="{"multiple" if multi_label else "single"}"' if control == "Choices" else ""
    options = "\n".join(f'    <{item} value="{escape(label, quote=True)}"/>' for label in labels)
    return (
        f'<View>\n  {obj}\n  <{control} name="{name}" toName="{target}"{choice}>\n{options}\n  </{control}>\n</View>\n'
    )


def _image_common(prediction: Prediction, result_id: str, from_name: str, score: float) -> dict:
    return {
        "id": result_id,
        "from_name": from_name,
        "to_name": "image",
        "original_width": prediction.width,
        "original_height": prediction.height,
        "image_rotation": 0,
        "score": round(float(score), 5),
    }


def _box_results(prediction: Prediction, d: Detections, points: list[np.ndarray] | None = None) -> list[dict]:
    """The rectangle or polygon results of ``d``; with ``points``, each polygon goes there (its outline in pixels,
    in order) and its result holds ``[]`` in place of its points (:func:`prediction_task_json` prints them)."""
    w, h = prediction.width, prediction.height
    results = []
    # .tolist(): Python floats, the values float() of each numpy element gives; the box sizes are float32
    # differences, as (x2 - x1) of two numpy float32 elements is
    sizes = (d.xyxy[:, 2:] - d.xyxy[:, :2]).tolist()
    outlines = instance_masks.outlines(d) if d.mask is not None else None
    for i, ((x1, y1, _, _), (bw, bh), score, name) in enumerate(
        zip(d.xyxy.tolist(), sizes, d.confidence.tolist(), d.class_name)
    ):
        common = _image_common(prediction, f"{prediction.index}-{i}", "label", score)
        if outlines is not None:
            polygons, _ = outlines[i]
            for part, polygon in enumerate(polygons):  # a mask in several parts: one polygon result per part
                if points is None:
                    value = {"points": _points(polygon, w, h), "polygonlabels": [str(name)]}
                else:
                    points.append(polygon)
                    value = {"points": [], "polygonlabels": [str(name)]}
                results.append({**common, "id": f"{common['id']}-{part}", "type": "polygonlabels", "value": value})
        else:
            value = {
                "x": round(x1 * 100 / w, 4),
                "y": round(y1 * 100 / h, 4),
                "width": round(bw * 100 / w, 4),
                "height": round(bh * 100 / h, 4),
                "rotation": 0,
                "rectanglelabels": [str(name)],
            }
            results.append({**common, "type": "rectanglelabels", "value": value})
    return results


def _points(polygon: np.ndarray, w: int, h: int) -> list[list[float]]:
    """A polygon's ``points``: percent of the image, rounded to 4 decimals."""
    return [[round(x * 100 / w, 4), round(y * 100 / h, 4)] for x, y in polygon.tolist()]


def _percent(polygon: np.ndarray, w: int, h: int) -> np.ndarray:
    """:func:`_points` before rounding, in numpy: the same doubles (``x * 100 / w`` of float32 values widened to
    doubles, one operation at a time)."""
    return polygon.astype(np.float64) * 100 / np.array([w, h], np.float64)


def _brush_results(prediction: Prediction, m: SemanticMask) -> list[dict]:
    return [
        {
            **_image_common(prediction, f"{prediction.index}-{s.class_id}", "tag", s.confidence),
            "type": "brushlabels",
            "value": {"format": "rle", "rle": brush_rle.encode(s.mask), "brushlabels": [s.class_name]},
        }
        for s in m.segments()
    ]


def _choice_results(prediction: Prediction, c: Classifications) -> list[dict]:
    if not len(c):
        return []
    kept = c if c.multi_label else c[:1]
    to_name = "image" if prediction.text is None else "text"
    return [
        {
            "id": f"{prediction.index}-0",
            "from_name": "choice",
            "to_name": to_name,
            "type": "choices",
            "value": {"choices": [str(n) for n in kept.class_name]},
            "score": round(float(kept.confidence[0]), 5),
        }
    ]


def _entity_results(prediction: Prediction, e: Entities) -> list[dict]:
    text = prediction.text or ""
    return [
        {
            "id": f"{prediction.index}-{i}",
            "from_name": "label",
            "to_name": "text",
            "type": "labels",
            "value": {"start": int(s), "end": int(t), "text": text[s:t], "labels": [str(name)]},
            "score": round(float(score), 5),
        }
        for i, (s, t, score, name) in enumerate(zip(e.start, e.end, e.confidence, e.class_name))
    ]


def prediction_task(prediction: Prediction, model_version: str, image_url=None) -> dict:
    """The Label Studio task (a JSON-ready dict) of a successful prediction: ``data`` and one ``predictions``
    entry whose ``model_version`` is ``model_version``; ``image_url`` maps an image's source to ``data.image``."""
    return _task(prediction, model_version, image_url, None)


# a polygon's points while they are printed apart: in ``json.dumps`` text only a "points" key can read so (a quote
# inside a string is escaped, and tasks have no keys of the data's own), and no outline is empty
_POINTS_SLOT = '"points": []'


def prediction_task_json(prediction: Prediction, model_version: str, image_url=None) -> str:
    """``json.dumps(prediction_task(...), ensure_ascii=False)``, the same text, faster for instance masks: the
    points of their outlines (thousands of numbers an item) are printed by numpy in one pass for the item."""
    points: list[np.ndarray] = []
    text = json.dumps(_task(prediction, model_version, image_url, points), ensure_ascii=False)
    if not points:
        return text
    parts = text.split(_POINTS_SLOT)
    if len(parts) != len(points) + 1:  # cannot happen (see _POINTS_SLOT); the slow way rather than a wrong task
        return json.dumps(prediction_task(prediction, model_version, image_url), ensure_ascii=False)
    # every outline of the item to percent at once (element by element: the same doubles as one at a time)
    percent = _percent(np.concatenate(points), prediction.width, prediction.height)
    texts = rounded_row_texts(percent, [len(polygon) for polygon in points], 4, (", ", "], ["))
    pieces = [parts[0]]
    for polygon, part in zip(texts, parts[1:]):
        pieces += ['"points": [[', polygon, "]]", part]
    return "".join(pieces)


def _task(prediction: Prediction, model_version: str, image_url, points: list[np.ndarray] | None) -> dict:
    result = prediction.result
    if isinstance(result, Detections):
        results = _box_results(prediction, result, points)
    elif isinstance(result, SemanticMask):
        results = _brush_results(prediction, result)
    elif isinstance(result, Classifications):
        results = _choice_results(prediction, result)
    elif isinstance(result, Entities):
        results = _entity_results(prediction, result)
    else:
        raise TypeError(f"no Label Studio layout for {type(result).__name__}")
    scores = [r["score"] for r in results]
    image = prediction.source if image_url is None else image_url(prediction.source)
    data = {"image": image} if prediction.text is None else {"text": prediction.text}
    return {
        "data": data,
        "predictions": [
            {
                "model_version": model_version,
                "score": round(sum(scores) / len(scores), 5) if scores else 0.0,
                "result": results,
            }
        ],
    }


class LabelStudioWriter:
    def __init__(
        self,
        out_dir: Path,
        labels: tuple[str, ...],
        model_type: ModelType = ModelType.OBJECT_DETECTION,
        model_version: str = "avala-infer",
        image_urls: ImageUrls | None = None,
    ) -> None:
        self.path = out_dir / "labelstudio.json"
        self.config_path = out_dir / "labelstudio.config.xml"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.labels = labels
        self.model_type = model_type
        self.model_version = model_version
        self.multi_label = False
        self.image_urls = image_urls
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = self._tmp.open("w", encoding="utf-8")
        self._file.write("[")
        self._count = 0

    def write(self, prediction: Prediction) -> None:
        if not prediction.ok:
            return
        if isinstance(prediction.result, Classifications) and prediction.result.multi_label:
            self.multi_label = True
        task = prediction_task_json(prediction, self.model_version, self.image_urls)
        self._file.write(("\n" if self._count == 0 else ",\n") + task)
        self._count += 1

    def close(self) -> list[Path]:
        try:
            self._file.write("\n]\n")
            self._file.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self.config_path.write_text(labeling_config(self.model_type, self.labels, self.multi_label), encoding="utf-8")
        return [self.path, self.config_path]

    def abort(self) -> None:
        self._file.close()
        remove_quietly(self._tmp)
