"""Export a project's results from the store with the writers ``label`` uses: COCO, YOLO, JSONL, Label Studio,
CoNLL, mask PNGs.

Class ids come from the project's ontology of the exported model type: label ``k`` of it is YOLO class ``k``,
COCO category ``k + 1`` and mask pixel value ``k + 1``, whatever job wrote the result. Jobs only ever append to
the ontology, so ids stay stable from one export to the next. Each item is written once, with its newest result
(or those of one job). Results are read from the store in chunks and written one item
at a time: memory stays flat however large the project.

A stored result is the JSONL record of its prediction, defined once in ``exporters/records.py`` (boxes in pixels,
masks as uncompressed COCO RLE, semantic classes as one RLE segment each, classes best first, entity spans with
character offsets); :func:`stored_prediction` turns one back into a :class:`~avala_infer.Prediction`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from avala_infer.annotations import Prediction
from avala_infer.errors import ConfigError, ItemError
from avala_infer.exporters import FORMATS, check_formats, make_writer
from avala_infer.exporters.base import aborting_on_error, close_sinks
from avala_infer.exporters.records import is_text_record, record_to_prediction
from avala_infer.store.projects import type_ontology
from avala_infer.types import ModelType


def stored_prediction(
    record: Mapping[str, Any],
    key: str,
    path: str | None,
    text: str | None,
    ontology: Sequence[str],
    *,
    model_type: ModelType | str | None = None,
    index: int = 0,
) -> Prediction:
    """The :class:`Prediction` a stored result stands for: :func:`~avala_infer.exporters.records.record_to_prediction`
    for an item of the store, whose text, when the item is a text file (a ``path`` and no inline ``text``), is read
    from that file. A file that cannot be read is an :class:`ItemError` naming the item."""
    if text is None and path is not None and is_text_record(record, model_type):
        from avala_infer.engine.loaders import read_text
        from avala_infer.engine.sources import Item

        try:
            text = read_text(Item(index, path, key), {})
        except ItemError as exc:
            raise ItemError(f"cannot export text item {key!r}: {exc}") from exc
    return record_to_prediction(record, key, path, text, ontology, model_type=model_type, index=index)


def _pick_source(
    store, project: dict[str, Any], model_type: str | None, model: str | None, job: str | None = None
) -> tuple[ModelType, str | None, set[str]]:
    """(model type, model or None for any, labels its results use), refusing what has no results."""
    uid = project["uid"]
    jobs = store.jobs.with_results(uid)
    if job is not None:
        picked = store.jobs.get(job)  # an unknown uid is a NotFoundError naming it
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
    labels = {name for j in jobs for name in store.jobs.label_counts(j["uid"])}
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
    project = store.projects.get(project_uid)
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
        for row in store.results.iter_latest(project_uid, chosen.value, model=model, job=job):
            prediction = stored_prediction(
                row["annotations"], row["key"], row["path"], row["text"], ontology, model_type=chosen, index=index
            )
            for writer in writers:
                writer.write(prediction)
            index += 1
    return close_sinks(writers)
