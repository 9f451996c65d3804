"""Export a project's results from the store with the writers ``label`` uses: COCO, YOLO, JSONL, Label Studio,
CoNLL, mask PNGs.

Class ids come from the project's ontology of the exported model type: label ``k`` of it is YOLO class ``k``,
COCO category ``k + 1`` and mask pixel value ``k + 1``, whatever job wrote the result. Jobs only ever append to
the ontology, so ids stay stable from one export to the next. Each item is written once, with its newest result
(or those of one job). Results are read from the store in chunks and written one item
at a time: memory stays flat however large the project.

A stored result is the JSONL record of its prediction (``exporters/jsonl.py``: boxes in pixels, masks as
uncompressed COCO RLE, semantic classes as one RLE segment each, classes best first, entity spans with
character offsets); :func:`record_to_prediction` turns one back into a :class:`~avala_infer.Prediction`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avala_infer.annotations import (
    UNLABELED,
    Classifications,
    Detections,
    Entities,
    Prediction,
    Result,
    SemanticMask,
)
from avala_infer.errors import ConfigError, ItemError
from avala_infer.exporters import FORMATS, check_formats, make_writer
from avala_infer.exporters.base import aborting_on_error, close_sinks
from avala_infer.exporters.codecs import rle
from avala_infer.store.catalog import type_ontology
from avala_infer.types import ModelType

DETECTION_TYPES = (ModelType.OBJECT_DETECTION, ModelType.INSTANCE_SEGMENTATION)
CLASSIFICATION_TYPES = (ModelType.IMAGE_CLASSIFICATION, ModelType.TEXT_CLASSIFICATION)


class _Ids:
    """Label name -> ontology position; a name the ontology lacks is an error naming the item."""

    def __init__(self, ontology: Sequence[str], key: str) -> None:
        self.index = {name: i for i, name in enumerate(ontology)}
        self.ontology = ontology
        self.key = key

    def __call__(self, name: str) -> int:
        try:
            return self.index[name]
        except KeyError:
            raise ConfigError(
                f"the result of item {self.key!r} has label {name!r}, which is not in the project's ontology "
                f"({', '.join(self.ontology) or 'empty'}); add it back (`avala-infer projects update PROJECT "
                f"--label {name}`) and export again"
            ) from None


def _guess_model_type(record: Mapping[str, Any], text: str | None) -> ModelType:
    """The model type a record's annotations were made by, for callers that do not say (an empty list of an
    image item is taken for boxes: pass ``model_type`` to get an empty semantic mask instead)."""
    annotations = record.get("annotations") or []
    if "multi_label" in record:
        return ModelType.TEXT_CLASSIFICATION if text is not None else ModelType.IMAGE_CLASSIFICATION
    if text is not None or any("start" in a for a in annotations):
        return ModelType.NAMED_ENTITY_RECOGNITION
    if any("bbox" not in a and "segmentation" in a for a in annotations):
        return ModelType.SEMANTIC_SEGMENTATION
    if any("segmentation" in a for a in annotations):
        return ModelType.INSTANCE_SEGMENTATION
    return ModelType.OBJECT_DETECTION


def _detections(annotations: list[dict], ids: _Ids, masks: bool, height: int, width: int) -> Detections:
    if not annotations:
        empty = Detections.empty()
        if masks:
            return Detections(empty.xyxy, empty.confidence, empty.class_id, empty.class_name,
                              np.zeros((0, height, width), bool))  # fmt: skip
        return empty
    with_masks = masks or any("segmentation" in a for a in annotations)
    mask = None
    if with_masks:
        mask = np.zeros((len(annotations), height, width), bool)
        for i, a in enumerate(annotations):
            if "segmentation" in a:
                mask[i] = rle.decode(a["segmentation"])
    return Detections(
        xyxy=np.asarray([a["bbox"] for a in annotations], np.float32).reshape(-1, 4),
        confidence=[a["score"] for a in annotations],
        class_id=[ids(a["label"]) for a in annotations],
        class_name=np.asarray([a["label"] for a in annotations], dtype=object),
        mask=mask,
    )


def _semantic(annotations: list[dict], ids: _Ids, height: int, width: int) -> SemanticMask:
    """Each segment's pixels get its ontology id and, as score, the segment's mean score."""
    class_map = np.full((height, width), UNLABELED, np.int32)
    score_map = np.zeros((height, width), np.float32)
    for a in annotations:
        pixels = rle.decode(a["segmentation"])
        class_map[pixels] = ids(a["label"])
        score_map[pixels] = a["score"]
    return SemanticMask(class_map, score_map, tuple(ids.ontology))


def _classifications(record: Mapping[str, Any], ids: _Ids) -> Classifications:
    annotations = record.get("annotations") or []
    return Classifications(
        class_id=[ids(a["label"]) for a in annotations],
        confidence=[a["score"] for a in annotations],
        class_name=np.asarray([a["label"] for a in annotations], dtype=object),
        multi_label=bool(record.get("multi_label", False)),
    )


def _entities(annotations: list[dict], ids: _Ids) -> Entities:
    return Entities.from_records(
        [
            {
                "start": a["start"],
                "end": a["end"],
                "score": a["score"],
                "class_id": ids(a["label"]),
                "label": a["label"],
                "word": a.get("word", a.get("text", "")),
                "tag": a.get("tag"),
            }
            for a in annotations
        ]
    )


def record_to_prediction(
    record: Mapping[str, Any],
    key: str,
    path: str | None,
    text: str | None,
    ontology: Sequence[str],
    *,
    model_type: ModelType | str | None = None,
    index: int = 0,
) -> Prediction:
    """The :class:`Prediction` a stored result (a JSONL record: ``exporters.jsonl.prediction_record``) stands
    for, with class ids remapped, by label name, to positions in ``ontology``.

    ``key``, ``path`` and ``text`` are the item's (``path`` None for a text stored inline; a text item with a
    path and no inline text is read from its file). ``model_type`` says which result type to build; without it
    the record's shape decides. ``index`` numbers the item (COCO image ids are ``index + 1``). A label the
    ontology lacks is a :class:`ConfigError`.
    """
    model_type = ModelType.parse(model_type) if model_type is not None else None
    if model_type is not None:
        is_text = model_type.media == "text"
    else:  # image records carry their size, text records do not
        is_text = text is not None or "width" not in record
    if is_text and text is None and path is not None:
        from avala_infer.engine.loaders import read_text
        from avala_infer.engine.sources import Item

        try:
            text = read_text(Item(index, path, key), {})
        except ItemError as exc:
            raise ItemError(f"cannot export text item {key!r}: {exc}") from exc
    if model_type is None:
        model_type = _guess_model_type(record, text if is_text else None)
    ids = _Ids(list(ontology), key)
    annotations = list(record.get("annotations") or [])
    width, height = int(record.get("width") or 0), int(record.get("height") or 0)
    result: Result
    if model_type in DETECTION_TYPES:
        masks = model_type is ModelType.INSTANCE_SEGMENTATION
        result = _detections(annotations, ids, masks, height, width)
    elif model_type is ModelType.SEMANTIC_SEGMENTATION:
        result = _semantic(annotations, ids, height, width)
    elif model_type in CLASSIFICATION_TYPES:
        result = _classifications(record, ids)
    else:
        result = _entities(annotations, ids)
    if model_type.media == "text":
        source = path if path is not None else f"<text {key}>"
        return Prediction(index, source, key, result=result, text=text or "")
    return Prediction(index, path or f"<image {key}>", key, width=width, height=height, result=result)


def _pick_source(
    store, project: dict[str, Any], model_type: str | None, model: str | None, job: str | None = None
) -> tuple[ModelType, str | None, set[str]]:
    """(model type, model or None for any, labels its results use), refusing what has no results."""
    uid = project["uid"]
    jobs = store.jobs_with_results(uid)
    if job is not None:
        picked = store.get_job(job)  # an unknown uid is a NotFoundError naming it
        if picked["project_uid"] != uid:
            raise ConfigError(f"job {job} labeled project {picked['project_uid']}, not {uid}")
        if picked["dry_run"] or picked["uid"] not in {j["uid"] for j in jobs}:
            raise ConfigError(f"job {job} holds no results to export (a dry run, or it labeled nothing)")
        if model_type is not None and ModelType.parse(model_type).value != picked["model_type"]:
            raise ConfigError(f"job {job} is a {picked['model_type']} job, not {ModelType.parse(model_type).value}")
        model_type = picked["model_type"]
        jobs = [j for j in jobs if j["uid"] == job]
    types = sorted({j["model_type"] for j in jobs})
    if model_type is None:
        if not types:
            raise ConfigError(f"project {uid} has no results to export yet; run an auto-label job first")
        if len(types) > 1:
            raise ConfigError(
                f"project {uid} holds results of several model types ({', '.join(types)}); choose one with "
                "--model-type / model_type="
            )
        chosen = ModelType.parse(types[0])
    else:
        chosen = ModelType.parse(model_type)
        if chosen.media != project["data_type"]:
            raise ConfigError(f"project {uid} holds {project['data_type']} items; {chosen.value} reads {chosen.media}")
    jobs = [j for j in jobs if j["model_type"] == chosen.value]
    if model is not None:
        models = sorted({j["model"] for j in jobs})
        if model not in models:
            raise ConfigError(
                f"no {chosen.value} results of model {model!r} in project {uid}; models with results: "
                f"{', '.join(models) or 'none'}"
            )
        jobs = [j for j in jobs if j["model"] == model]
    if not jobs:
        raise ConfigError(
            f"project {uid} has no {chosen.value} results to export (results of: {', '.join(types) or 'none'}); "
            f"run an auto-label job with model_type={chosen.value} first"
        )
    labels = {name for j in jobs for name in store.job_label_counts(j["uid"])}
    return chosen, model, labels


def export_project(
    store,
    project_uid: str,
    out_dir: str | os.PathLike,
    formats: Sequence[str],
    model_type: str | ModelType | None = None,
    mask_format: str = "rle",
    *,
    model: str | None = None,
    job: str | None = None,
    ls_root: str | os.PathLike | None = None,
    ls_url_prefix: str | None = None,
) -> list[Path]:
    """Write the project's results as ``formats`` into ``out_dir``; returns the files (and folders) written.

    The vocabulary is the project's ontology of the model type, so class ids are ontology positions, the same in
    every export. Each item with a result of ``model_type`` is written once, in task order, with its newest
    result: the one the most recent job of that type (of ``model``, when given) made or kept (a job that
    skipped a task because it held a result with the same settings keeps that result); with ``job``, the
    results of that job only. Items without one (not labeled yet, or failed) are not exported. A project with
    results of several model types needs ``model_type`` (or ``job``). ``formats`` must suit the model type
    (``exporters.FORMATS_FOR``); ``mask_format`` (``rle`` or ``polygon``) is how COCO holds masks. Results are
    streamed from the store: memory stays flat.
    ``ls_root`` / ``ls_url_prefix``: how Label Studio tasks point at their images (see ``exporters/labelstudio.py``);
    an item outside ``ls_root`` stops the export with an error naming the root (nothing is left written).
    """
    formats = list(dict.fromkeys(formats))
    if not formats:
        raise ConfigError("no export format given: pass at least one of " + ", ".join(FORMATS))
    if mask_format not in ("rle", "polygon"):
        raise ConfigError(f"mask_format must be rle or polygon, got {mask_format!r}")
    project = store.get_project(project_uid)
    chosen, model, labels = _pick_source(store, project, None if model_type is None else str(model_type), model, job)
    check_formats(formats, chosen)
    image_urls = None
    if ls_root is not None or ls_url_prefix is not None:
        from avala_infer.exporters.labelstudio import ImageUrls

        if "labelstudio" not in formats:
            raise ConfigError("ls_root / ls_url_prefix (--ls-root, --ls-url-prefix) apply to the labelstudio format")
        image_urls = ImageUrls(ls_root, ls_url_prefix)
    ontology = tuple(type_ontology(project, chosen.value))
    missing = sorted(labels - set(ontology))
    if missing:
        raise ConfigError(
            f"project {project_uid}'s results use label(s) {missing} that its ontology ({', '.join(ontology)}) "
            f"lacks; add them back (`avala-infer projects update {project_uid} --label NAME`) and export again"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writers: list = []
    index = 0
    with aborting_on_error(writers):  # an error (a result, a text file gone, a writer) leaves no temporary file
        for fmt in formats:
            writers.append(make_writer(fmt, out, ontology, mask_format, chosen, image_urls))
        for row in store.iter_latest_results(project_uid, chosen.value, model=model, job=job):
            prediction = record_to_prediction(
                row["annotations"], row["key"], row["path"], row["text"], ontology, model_type=chosen, index=index
            )
            for writer in writers:
                writer.write(prediction)
            index += 1
    return close_sinks(writers)
