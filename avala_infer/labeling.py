"""One call that labels a whole set of inputs and writes the outputs, as the CLI's ``label`` does."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from avala_infer.engine import Engine
from avala_infer.engine.sources import Source, TextReading, check_some_items, check_sources_fit, count_items, iter_items
from avala_infer.errors import ConfigError
from avala_infer.exporters import FORMATS, check_formats, make_writer
from avala_infer.exporters.base import (
    FailureLog,
    FolderLock,
    Sink,
    aborting_on_error,
    close_sinks,
    earlier_outputs,
    remove_outputs,
)
from avala_infer.exporters.preview import DEFAULT_PREVIEW_COUNT, PreviewWriter
from avala_infer.exporters.summary import SummaryCollector, dry_run_options
from avala_infer.specs import find_spec

ProgressFn = Callable[[int, "int | None", int], None]  # (done, total or None, failed)


@dataclasses.dataclass
class LabelReport:
    """What a labeling run did: counts, the files it wrote, and its summary."""

    out_dir: Path
    total: int
    succeeded: int
    failed: int
    dry_run: bool
    files: list[Path]
    summary: dict
    failures_file: Path | None = None

    @property
    def all_ok(self) -> bool:
        return self.failed == 0


def label(
    sources: Source | Iterable[Source],
    model: str | os.PathLike | Engine = "yolo11n",
    *,
    out: str | os.PathLike | None = None,
    formats: Sequence[str] = ("jsonl",),
    mask_format: str = "rle",
    dry_run: bool = False,
    preview_count: int = DEFAULT_PREVIEW_COUNT,
    confidence_threshold: float = 0.25,
    iou_threshold: float = 0.7,
    labels: Sequence[str] | None = None,
    label_thresholds: Mapping[str, float] | None = None,
    label_map: Mapping[str, str | None] | None = None,
    max_det: int = 300,
    top_k: int | None = 5,
    aggregation: str = "first",
    text_field: str = "text",
    per_line: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
    input_size: int | None = None,
    progress: ProgressFn | None = None,
    trust_weights: bool = False,
    overwrite: bool = False,
    exist_ok: bool = False,
    ls_root: str | os.PathLike | None = None,
    ls_url_prefix: str | None = None,
) -> LabelReport:
    """Label ``sources`` with ``model`` and write ``formats`` into ``out``.

    ``model`` is a model name, spec or weights path, or a loaded :class:`Engine` (then ``device``,
    ``batch_size`` and ``input_size`` are the engine's own and these arguments are not used).
    ``mask_format`` (``rle`` or ``polygon``) chooses how COCO holds masks. ``top_k`` applies to classifiers,
    ``aggregation`` to named entities, ``text_field``/``per_line`` to how text files split into items
    (see :meth:`Engine.predict`). Formats must suit the model type (``exporters.FORMATS_FOR``).
    With ``dry_run`` the same pipeline runs but only previews (``out/preview/``), ``summary.json`` and,
    if items failed, ``failures.jsonl`` are written: no annotation file of any format.
    Failed items never stop the run; they are counted and listed in ``out/failures.jsonl``.
    ``trust_weights=True`` loads a pickled ``.pt`` from outside the model folders (see :class:`Engine`).
    ``out`` is made if missing; without it each run gets a new folder, ``runs/label``, ``runs/label2``... (as
    ultralytics' ``runs/predict2``). One run at a time may use a folder (a second one is refused at once), and a
    folder that holds an earlier run's outputs is refused unless ``overwrite=True`` (its outputs of every format
    are removed first) or ``exist_ok=True`` (written into as it is). All of this is checked before the model loads.
    ``ls_root`` / ``ls_url_prefix``: how Label Studio tasks point at their images (``/data/local-files/?d=`` paths
    relative to ``ls_root``, or ``ls_url_prefix/<relative path>``; see ``exporters/labelstudio.py``).
    A file reached twice (named twice, a folder plus a glob) is labeled once; empty folders and globs that match
    nothing are refused before the model loads.
    """
    formats = list(dict.fromkeys(formats))
    model_type = model.model_type if isinstance(model, Engine) else find_spec(model).model_type
    if not dry_run:
        check_formats(formats, model_type)  # before loading the model
    if not dry_run and not formats:
        raise ConfigError("no output format given: pass at least one of " + ", ".join(FORMATS) + " or dry_run=True")
    if mask_format not in ("rle", "polygon"):
        raise ConfigError(f"mask_format must be rle or polygon, got {mask_format!r}")
    if preview_count < 0:
        raise ConfigError(f"preview_count must be >= 0, got {preview_count}")
    if isinstance(sources, (str, os.PathLike, list, tuple)):  # empty folders, globs matching nothing: before loading
        check_some_items(sources, model_type.media, TextReading(per_line=per_line, field=text_field))
    image_urls = None
    if ls_root is not None or ls_url_prefix is not None:
        from avala_infer.exporters.labelstudio import ImageUrls

        if dry_run or "labelstudio" not in formats:
            raise ConfigError("ls_root / ls_url_prefix (--ls-root, --ls-url-prefix) apply to the labelstudio format")
        image_urls = ImageUrls(ls_root, ls_url_prefix)
        if model_type.media == "image" and isinstance(sources, (str, os.PathLike, list, tuple)):
            image_urls.check_sources(sources)  # an image outside the root: refused before the model loads
    arguments = dict(
        sources=sources, out=out, formats=formats, mask_format=mask_format, dry_run=dry_run,
        preview_count=preview_count, confidence_threshold=confidence_threshold, iou_threshold=iou_threshold,
        labels=labels, label_thresholds=label_thresholds, label_map=label_map, max_det=max_det, top_k=top_k,
        aggregation=aggregation, text_field=text_field, per_line=per_line, progress=progress, image_urls=image_urls,
    )  # fmt: skip
    with output_folder(out, overwrite=overwrite, exist_ok=exist_ok) as out_dir:  # before the model loads
        arguments["out"] = out_dir
        if isinstance(model, Engine):
            return _label(engine=model, **arguments)
        engine = Engine(model, device=device, batch_size=batch_size, input_size=input_size, trust_weights=trust_weights)
        with engine:  # ours: its model is released when the run ends, however it ends
            return _label(engine=engine, **arguments)


def _label(
    engine: Engine,
    sources,
    out,
    formats: list[str],
    mask_format: str,
    dry_run: bool,
    preview_count: int,
    confidence_threshold: float,
    iou_threshold: float,
    labels,
    label_thresholds,
    label_map,
    max_det: int,
    top_k: int | None,
    aggregation: str,
    text_field: str,
    per_line: bool,
    progress: ProgressFn | None,
    image_urls=None,
) -> LabelReport:
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    options = engine.predict_options(  # checks every argument before any work
        confidence_threshold=confidence_threshold,
        iou_threshold=iou_threshold,
        labels=labels,
        label_thresholds=label_thresholds,
        label_map=label_map,
        max_det=max_det,
        top_k=top_k,
        aggregation=aggregation,
        text_field=text_field,
        per_line=per_line,
    )
    vocabulary = options.label_filter.output_labels
    media = engine.model_type.media
    if isinstance(sources, (list, tuple)):
        check_sources_fit(sources, media, engine.spec.name)
    # unique: a file reached twice (named twice, a folder plus a glob) is labeled once (Engine.predict keeps one
    # prediction per input given)
    predict_with = dry_run_options(options, engine.model_type) if dry_run else options  # a dry run: at a floor
    predictions = engine.stream(iter_items(sources, media, options.text_reading, unique=True), predict_with)
    total = (
        count_items(sources, media, options.text_reading, unique=True) if isinstance(sources, (list, tuple)) else None
    )
    if total == 0:
        kinds = "image files" if media == "image" else ".txt/.jsonl/.csv/.tsv files"
        raise ConfigError(f"no input items found in {[str(s) for s in sources]}: give {kinds}, folders or globs")
    out_dir = Path(out)  # made, locked and checked by output_folder
    settings = {
        "model": engine.spec.name,
        "model_type": engine.model_type.value,
        "backend": engine.spec.backend,
        "device": engine.device,
        "batch_size": engine.batch_size,
        "input_size": engine.predictor.spec.input_size,
        "confidence_threshold": confidence_threshold,
        **_type_settings(engine.model_type, iou_threshold, max_det, top_k, aggregation, text_field, per_line),
        "labels": list(labels) if labels else None,
        "dry_run": dry_run,
        "formats": [] if dry_run else formats,
    }
    summary = SummaryCollector(out_dir, vocabulary, settings, requested=options.label_filter, dry_run=dry_run)
    failures = FailureLog(out_dir)
    sinks: list[Sink] = [summary, failures]
    done = reported = 0
    last_report = 0.0
    # on any error (the inputs, the model, a writer, the progress callback) every sink is aborted: files closed,
    # temporary files removed; then the error goes on to the caller
    with contextlib.closing(predictions), aborting_on_error(sinks):
        if dry_run:
            sinks.append(PreviewWriter(out_dir, summary, preview_count))
        else:
            for fmt in formats:
                sinks.append(make_writer(fmt, out_dir, vocabulary, mask_format, engine.model_type, image_urls))
        for prediction in predictions:
            for sink in sinks:
                sink.write(prediction)
            done += 1
            now = time.monotonic()
            if progress is not None and (now - last_report > 0.2 or done == total):
                progress(done, total, failures.count)
                last_report, reported = now, done
        if progress is not None and reported != done:
            progress(done, total, failures.count)
    files = close_sinks(sinks)
    return LabelReport(
        out_dir=out_dir,
        total=done,
        succeeded=summary.succeeded,
        failed=summary.failed,
        dry_run=dry_run,
        files=files,
        summary=summary.as_dict(),
        failures_file=failures.path if failures.count else None,
    )


def _type_settings(model_type, iou_threshold, max_det, top_k, aggregation, text_field, per_line) -> dict:
    """The settings that matter for this model type, for ``summary.json``."""
    from avala_infer.types import ModelType

    settings: dict = {}
    if model_type in (ModelType.OBJECT_DETECTION, ModelType.INSTANCE_SEGMENTATION):
        settings.update(iou_threshold=iou_threshold, max_det=max_det)
    if model_type in (ModelType.IMAGE_CLASSIFICATION, ModelType.TEXT_CLASSIFICATION):
        settings["top_k"] = top_k
    if model_type is ModelType.NAMED_ENTITY_RECOGNITION:
        settings["aggregation"] = aggregation
    if model_type.media == "text":
        settings.update(text_field=text_field, per_line=per_line)
    return settings


DEFAULT_OUT = Path("runs") / "label"


@contextlib.contextmanager
def output_folder(out: str | os.PathLike | None, *, overwrite: bool = False, exist_ok: bool = False) -> Iterator[Path]:
    """The run's output folder, made, locked for this run and checked, for the ``with`` block; see :func:`label`.

    A folder this made is removed again if the block fails and leaves it empty.
    """
    if overwrite and exist_ok:
        raise ConfigError("pass overwrite (remove an earlier run's outputs) or exist_ok (keep them), not both")
    if out is None and not (overwrite or exist_ok):
        folder, created = _numbered_folder(DEFAULT_OUT), True
    else:
        folder = Path(out) if out is not None else DEFAULT_OUT
        created = not folder.exists()
        _make_folder(folder, exist_ok=True)
    lock = FolderLock(folder)
    try:
        try:
            lock.acquire()
        except OSError as exc:  # the folder exists but cannot be written
            raise ConfigError(f"cannot write in the output folder {folder}: {exc.strerror or exc}") from exc
        earlier = earlier_outputs(folder)
        if earlier and overwrite:
            remove_outputs(earlier)
        elif earlier and not exist_ok:
            names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in earlier[:6])
            raise ConfigError(
                f"{folder} holds the outputs of an earlier run ({names}{', ...' if len(earlier) > 6 else ''}); "
                "pass --overwrite (overwrite=True) to remove them first, --exist-ok (exist_ok=True) to write into "
                "the folder as it is, or another --out"
            )
        yield folder
    except BaseException:
        lock.release()
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: whatever the run wrote (failures.jsonl...) stays
        raise
    lock.release()


def _make_folder(folder: Path, exist_ok: bool) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        if exist_ok:  # a file, not a folder
            raise ConfigError(f"cannot use {folder} as the output folder: it is a file; pass a folder") from None
        raise
    except OSError as exc:
        raise ConfigError(
            f"cannot use {folder} as the output folder: {exc.strerror or exc}; pass a folder you can write to"
        ) from exc


def _numbered_folder(base: Path) -> Path:
    """The first of ``base``, ``base2``, ``base3``... that does not exist, made (atomically: two runs starting
    together get two folders)."""
    for n in itertools.count(1):
        folder = base if n == 1 else base.with_name(f"{base.name}{n}")
        try:
            _make_folder(folder, exist_ok=False)
        except FileExistsError:
            continue
        return folder
    raise AssertionError("unreachable")
