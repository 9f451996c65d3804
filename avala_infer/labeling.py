"""One call that labels a whole set of inputs and writes the outputs, as the CLI's ``label`` does.

:func:`label` checks its arguments before the model loads and takes the output folder (:func:`output_folder`:
made, locked, checked); then :class:`_Outputs` builds the run's sinks (the summary, the failure log, and the
annotation writers or, for a dry run, the preview gallery) and :func:`_drive` runs the engine's stream through
them (every prediction to every sink, progress), ending in a :class:`LabelReport`. The sinks run on their own
thread (:class:`_WriterThread`), fed through a bounded queue, so the pipeline's thread never waits on files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from avala_infer.annotations import Prediction
from avala_infer.engine import Engine
from avala_infer.engine.pipeline import ImageCallback, PredictOptions, is_prompted
from avala_infer.engine.sources import (
    Item,
    Source,
    TextReading,
    check_some_items,
    check_sources_fit,
    count_items,
    iter_items,
)
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
from avala_infer.types import ModelType

ProgressFn = Callable[[int, "int | None", int], None]  # (done, total or None, failed)
PROGRESS_EVERY_S = 0.2  # the progress callback is called at most this often (and once more at the end)
# Predictions waiting for the writer thread, at most: enough for the pipeline to run a batch or two ahead of slow
# files, few enough that memory stays bounded (an instance-segmentation prediction holds full-size masks).
WRITER_QUEUE_ITEMS = 64


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
    letterbox: str | None = None,
    decode: str = "cpu",
    progress: ProgressFn | None = None,
    trust_weights: bool = False,
    overwrite: bool = False,
    exist_ok: bool = False,
    ls_root: str | os.PathLike | None = None,
    ls_url_prefix: str | None = None,
) -> LabelReport:
    """Label ``sources`` with ``model`` and write ``formats`` into ``out``.

    ``model`` is a model name, spec or weights path, or a loaded :class:`Engine` (then ``device``,
    ``batch_size``, ``input_size`` and ``letterbox`` are the engine's own and these arguments are not used).
    ``letterbox`` (``rect`` or ``square``, YOLO models) overrides the engine's choice: rect on a CPU, square on a
    GPU (full batches; see :class:`Engine`). ``decode`` (``cpu``, ``gpu`` or ``auto``) is where JPEGs decode (see
    :class:`Engine`; not used with a loaded engine either).
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
    For a prompted model (an open-vocabulary detector: :func:`is_prompted`) ``labels`` is the vocabulary, the
    texts it looks for (``labels=["forklift", "pallet"]``, each prompted as the spec's ``params.prompts`` says);
    for any other it keeps only those of the model's labels. A loaded engine keeps the vocabulary it was made
    with (``Engine(vocabulary=)``): ``labels`` filters it.
    """
    spec = None if isinstance(model, Engine) else find_spec(model)
    model_type = model.model_type if spec is None else spec.model_type
    run = _RunSettings(
        formats=tuple(dict.fromkeys(formats)), mask_format=mask_format, dry_run=dry_run, preview_count=preview_count,
        confidence_threshold=confidence_threshold, iou_threshold=iou_threshold, labels=labels,
        label_thresholds=label_thresholds, label_map=label_map, max_det=max_det, top_k=top_k,
        aggregation=aggregation, text_field=text_field, per_line=per_line,
    )  # fmt: skip
    run.check(model_type)  # before loading the model
    if isinstance(sources, (str, os.PathLike, list, tuple)):  # empty folders, globs matching nothing: before loading
        check_some_items(sources, model_type.media, TextReading(per_line=per_line, field=text_field))
    if ls_root is not None or ls_url_prefix is not None:
        run = dataclasses.replace(run, image_urls=_image_urls(sources, model_type, run, ls_root, ls_url_prefix))
    with output_folder(out, overwrite=overwrite, exist_ok=exist_ok) as out_dir:  # before the model loads
        if isinstance(model, Engine):
            return _label(model, sources, out_dir, run, progress)
        engine = Engine(
            spec,
            device=device,
            batch_size=batch_size,
            input_size=input_size,
            letterbox=letterbox,
            trust_weights=trust_weights,
            decode=decode,
            vocabulary=labels if labels and is_prompted(spec) else None,
        )
        with engine:  # ours: its model is released when the run ends, however it ends
            return _label(engine, sources, out_dir, run, progress)


@dataclasses.dataclass(frozen=True)
class _RunSettings:
    """How one :func:`label` run predicts and what it writes, as the caller gave them."""

    formats: tuple[str, ...]
    mask_format: str
    dry_run: bool
    preview_count: int
    confidence_threshold: float
    iou_threshold: float
    labels: Sequence[str] | None
    label_thresholds: Mapping[str, float] | None
    label_map: Mapping[str, str | None] | None
    max_det: int
    top_k: int | None
    aggregation: str
    text_field: str
    per_line: bool
    image_urls: Any = None  # an exporters.labelstudio.ImageUrls, for the labelstudio format

    def check(self, model_type: ModelType) -> None:
        """Refuse, before the model loads, formats the model type cannot use and out-of-range settings."""
        if not self.dry_run:
            check_formats(list(self.formats), model_type)
        if not self.dry_run and not self.formats:
            raise ConfigError("no output format given: pass at least one of " + ", ".join(FORMATS) + " or dry_run=True")
        if self.mask_format not in ("rle", "polygon"):
            raise ConfigError(f"mask_format must be rle or polygon, got {self.mask_format!r}")
        if self.preview_count < 0:
            raise ConfigError(f"preview_count must be >= 0, got {self.preview_count}")

    def predict_options(self, engine: Engine) -> PredictOptions:
        """The engine's options for this run (checks every argument before any work)."""
        return engine.predict_options(
            confidence_threshold=self.confidence_threshold,
            iou_threshold=self.iou_threshold,
            labels=self.labels,
            label_thresholds=self.label_thresholds,
            label_map=self.label_map,
            max_det=self.max_det,
            top_k=self.top_k,
            aggregation=self.aggregation,
            text_field=self.text_field,
            per_line=self.per_line,
        )

    def summary_settings(self, engine: Engine) -> dict:
        """The settings ``summary.json`` records: the model's, then those that matter for its model type."""
        model_type = engine.model_type
        settings: dict = {
            "model": engine.spec.name,
            "model_type": model_type.value,
            "backend": engine.spec.backend,
            "device": engine.device,
            "batch_size": engine.batch_size,
            "input_size": engine.predictor.spec.input_size,
            "confidence_threshold": self.confidence_threshold,
        }
        if model_type in (ModelType.OBJECT_DETECTION, ModelType.INSTANCE_SEGMENTATION):
            settings.update(
                iou_threshold=self.iou_threshold, max_det=self.max_det, letterbox=engine.predictor.spec.letterbox
            )
        if model_type in (ModelType.IMAGE_CLASSIFICATION, ModelType.TEXT_CLASSIFICATION):
            settings["top_k"] = self.top_k
        if model_type is ModelType.NAMED_ENTITY_RECOGNITION:
            settings["aggregation"] = self.aggregation
        if model_type.media == "text":
            settings.update(text_field=self.text_field, per_line=self.per_line)
        settings.update(
            labels=list(self.labels) if self.labels else None,
            dry_run=self.dry_run,
            formats=[] if self.dry_run else list(self.formats),
        )
        return settings


def _image_urls(sources, model_type: ModelType, run: _RunSettings, ls_root, ls_url_prefix):
    """How Label Studio tasks point at their images; an image outside ``ls_root`` is refused before loading."""
    from avala_infer.exporters.labelstudio import ImageUrls

    if run.dry_run or "labelstudio" not in run.formats:
        raise ConfigError("ls_root / ls_url_prefix (--ls-root, --ls-url-prefix) apply to the labelstudio format")
    image_urls = ImageUrls(ls_root, ls_url_prefix)
    if model_type.media == "image" and isinstance(sources, (str, os.PathLike, list, tuple)):
        image_urls.check_sources(sources)
    return image_urls


def _label(engine: Engine, sources, out_dir: Path, run: _RunSettings, progress: ProgressFn | None) -> LabelReport:
    """Label with a loaded engine into a folder :func:`output_folder` took: build the sinks, drive them."""
    options = run.predict_options(engine)
    items, total = _items(engine, sources, options)
    outputs = _Outputs(engine, out_dir, run, options)
    # on any error (the inputs, the model, a writer, the progress callback) the stream stops and every sink is
    # aborted: files closed, temporary files removed; then the error goes on to the caller
    with aborting_on_error(outputs.sinks):
        outputs.open_writers()
        predict_with = dry_run_options(options, engine.model_type) if run.dry_run else options  # at a floor
        predictions = engine.stream(items, predict_with, on_image=outputs.on_image)
        with contextlib.closing(predictions):
            done = _drive(predictions, outputs.sinks, progress, total, outputs.failures)
    return outputs.close(done)


def _items(engine: Engine, sources, options: PredictOptions) -> tuple[Iterator[Item], int | None]:
    """The items to label, and how many when the sources can be counted (not a generator); none is an error.

    Unique: a file reached twice (named twice, a folder plus a glob) is labeled once (``Engine.predict`` keeps one
    prediction per input given)."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    media = engine.model_type.media
    if isinstance(sources, (list, tuple)):
        check_sources_fit(sources, media, engine.spec.name)
    items = iter_items(sources, media, options.text_reading, unique=True)
    total = (
        count_items(sources, media, options.text_reading, unique=True) if isinstance(sources, (list, tuple)) else None
    )
    if total == 0:
        kinds = "image files" if media == "image" else ".txt/.jsonl/.csv/.tsv files"
        raise ConfigError(f"no input items found in {[str(s) for s in sources]}: give {kinds}, folders or globs")
    return items, total


class _Outputs:
    """A run's sinks: the summary and the failure log from the start, then (:meth:`open_writers`) the preview
    gallery of a dry run or one annotation writer per format; :meth:`close` finishes them into the report."""

    def __init__(self, engine: Engine, out_dir: Path, run: _RunSettings, options: PredictOptions) -> None:
        self.engine = engine
        self.out_dir = out_dir
        self.run = run
        self.vocabulary = options.label_filter.output_labels
        self.summary = SummaryCollector(
            out_dir, self.vocabulary, run.summary_settings(engine), requested=options.label_filter, dry_run=run.dry_run
        )
        self.failures = FailureLog(out_dir)
        self.preview: PreviewWriter | None = None
        self.sinks: list[Sink] = [self.summary, self.failures]

    def open_writers(self) -> None:
        """Add the preview (a dry run) or the writers; each joins :attr:`sinks` as soon as it exists, so that an
        error opening the next one aborts it."""
        run = self.run
        if run.dry_run:
            self.preview = PreviewWriter(self.out_dir, self.summary, run.preview_count)
            self.sinks.append(self.preview)
            return
        for fmt in run.formats:
            self.sinks.append(
                make_writer(fmt, self.out_dir, self.vocabulary, run.mask_format, self.engine.model_type, run.image_urls)
            )

    @property
    def on_image(self) -> ImageCallback | None:
        """Where the engine hands its decoded pictures: the preview, which draws them (no file is read twice)."""
        return self.preview.take_image if self.preview is not None else None

    def close(self, done: int) -> LabelReport:
        """Finish every sink (files renamed into place, the summary and the gallery written): the run's report."""
        files = close_sinks(self.sinks)
        return LabelReport(
            out_dir=self.out_dir,
            total=done,
            succeeded=self.summary.succeeded,
            failed=self.summary.failed,
            dry_run=self.run.dry_run,
            files=files,
            summary=self.summary.as_dict(),
            failures_file=self.failures.path if self.failures.count else None,
        )


def _drive(
    predictions: Iterator[Prediction],
    sinks: list[Sink],
    progress: ProgressFn | None,
    total: int | None,
    failures: FailureLog,
) -> int:
    """Every prediction to every sink, in order, on the writer thread; ``progress(done, total, failed)``, counting
    written items, at most every :data:`PROGRESS_EVERY_S` and once at the end. Returns how many items came.

    An error in a sink (or in ``progress``) stops the run with that error; an error here (the engine, Ctrl-C)
    stops the writer thread. Either way the thread has ended before this returns or raises, so the caller may
    abort the sinks with no write still under way."""
    writer = _WriterThread(sinks, progress, total, failures)
    try:
        for prediction in predictions:
            writer.put(prediction)
    except BaseException:
        writer.stop()
        raise
    writer.finish()
    if progress is not None and writer.reported != writer.done:
        progress(writer.done, total, failures.count)
    return writer.done


_END = object()  # the last thing put on a writer queue


class _WriterThread:
    """The sinks, run on a thread of their own from a bounded queue (:data:`WRITER_QUEUE_ITEMS`), in input order.

    The thread writes each prediction to every sink, counts it in :attr:`done` and reports progress. After an
    error (kept in :attr:`error`, raised to the feeder at its next :meth:`put`) or a :meth:`stop`, it takes what
    is queued without writing it, so that the feeder never blocks on a full queue; it ends at :data:`_END`.
    """

    def __init__(self, sinks: list[Sink], progress: ProgressFn | None, total: int | None, failures: FailureLog) -> None:
        self.sinks = sinks
        self.progress = progress
        self.total = total
        self.failures = failures
        self.done = self.reported = 0
        self.error: BaseException | None = None
        self._stopping = False
        self._last_report = 0.0
        self._queue: queue.Queue = queue.Queue(WRITER_QUEUE_ITEMS)
        # a daemon: should the feeder be killed while it waits for the thread, the process can still exit
        self._thread = threading.Thread(target=self._run, name="avala-infer-writers", daemon=True)
        self._thread.start()

    def put(self, prediction: Prediction) -> None:
        """Queue ``prediction`` (waits while the queue is full); raises the error a sink raised, if one did
        (checked after the wait too: the engine does not go on to its next batch for nothing)."""
        if self.error is None:
            self._queue.put(prediction)
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Wait until every queued prediction is written; raise the error a sink raised, if one did."""
        self._end()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """The run failed on the feeding side: drop what is queued and wait for the thread to end."""
        self._stopping = True
        self._end()

    def _end(self) -> None:
        self._queue.put(_END)
        self._thread.join()

    def _run(self) -> None:
        while (prediction := self._queue.get()) is not _END:
            if self.error is not None or self._stopping:
                continue  # the run is ending: keep the queue moving, write nothing more
            try:
                self._write(prediction)
            except BaseException as exc:  # handed to the feeder, which stops the run with it
                self.error = exc

    def _write(self, prediction: Prediction) -> None:
        for sink in self.sinks:
            sink.write(prediction)
        self.done += 1
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self._last_report > PROGRESS_EVERY_S or self.done == self.total:
            self.progress(self.done, self.total, self.failures.count)
            self._last_report, self.reported = now, self.done


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
