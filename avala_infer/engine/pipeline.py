"""The engine: sources -> loaders -> batches -> forward -> postprocess -> filter -> predictions, streaming."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from avala_infer.annotations import Classifications, Prediction
from avala_infer.engine.batching import BatchDispatch, BatchLimit, ReorderBuffer, ShapeBatcher, StageChain
from avala_infer.engine.device_decode import (
    collate_on_device,
    decode_pending,
    device_decode_for,
    drop_device_pictures,
    has_pending,
    pending,
)
from avala_infer.engine.devices import resolve_devices
from avala_infer.engine.loaders import EncodedJpeg, prefetch, read_image, read_text
from avala_infer.engine.sources import Item, Source, Text, TextReading, check_sources_fit, iter_items
from avala_infer.errors import AvalaInferError, ConfigError
from avala_infer.filters import LabelFilter, build_filter
from avala_infer.registry import get_predictor_class
from avala_infer.specs import ModelSpec, find_spec, resolve_weights
from avala_infer.trust import check_weights
from avala_infer.types import AGGREGATIONS, DEFAULT_AGGREGATION

log = logging.getLogger(__name__)
status = logging.getLogger("avala_infer.status")
T = TypeVar("T")

# (position of the item in the stream, its decoded BGR image): see Engine.stream's ``on_image``
ImageCallback = Callable[[int, np.ndarray], None]


# On a GPU a forward pass of 8 small images leaves it idle most of the time: there the engine's own defaults
# replace the spec's batch_size and letterbox (which stay the CPU's), unless the caller passes them.
CUDA_BATCH_SIZE = 64
CUDA_LETTERBOX = "square"  # one input shape: every batch leaves full (rect gives ~14 shapes on COCO)
# how many batches' worth of items may wait in the batcher for their shape's batch to fill (ShapeBatcher's window);
# a GPU wants its batches full and its host has the memory for the wait
WINDOW_BATCHES_CPU = 4
WINDOW_BATCHES_CUDA = 8
# loader threads a GPU engine starts at most when the caller names none (default_workers)
MAX_GPU_WORKERS = 32
# batches one stream holds at once in a device's stage threads: one per stage (collate, forward, postprocess) and
# one more collated ahead, so the forward never waits for a collate; it bounds the memory of the batches in flight
STAGE_CAPACITY = 4
# the same for a device whose batches run whole (a CPU): this many per thread, one running and one waiting
WHOLE_BATCHES_PER_THREAD = 2
# consecutive items per loader task (fewer when the read-ahead is short); a predictor with ``prepare_many`` (a
# text tokenizer: one call for many texts) gets PREPARE_CHUNK
LOAD_CHUNK = 8
PREPARE_CHUNK = 32
# what an out-of-memory error says when it is not torch's OutOfMemoryError: torch's cuBLAS/cuDNN faults and
# onnxruntime's CUDA provider (its errors are not RuntimeErrors)
OUT_OF_MEMORY_MESSAGES = ("CUDA out of memory", "CUDA error: out of memory", "CUDA failure 2: out of memory")


def batching_overrides(device: str, batch_size: int | None, letterbox: str | None) -> dict[str, Any]:
    """The spec's ``batch_size`` and ``letterbox`` on ``device``: the caller's values when given; else on CUDA
    :data:`CUDA_BATCH_SIZE` and :data:`CUDA_LETTERBOX`, on a CPU the spec's own (``None``: left as they are)."""
    if device.startswith("cuda"):
        batch_size = CUDA_BATCH_SIZE if batch_size is None else batch_size
        letterbox = CUDA_LETTERBOX if letterbox is None else letterbox
    return {"batch_size": batch_size, "letterbox": letterbox}


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device ran out of memory (a smaller batch may then fit)."""
    torch = sys.modules.get("torch")  # not imported: the error cannot be one of its own
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    message = str(exc)
    return any(text in message for text in OUT_OF_MEMORY_MESSAGES)


_threads_lock = threading.Lock()
_threads_configured = False
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def configure_torch_threads(count: int | None) -> None:
    """Set torch's intra-op thread count to ``count``, once per process, and never restore it.

    ``torch.set_num_threads`` is process-wide: engines that set it around each stream and restored it after
    restored each other's values in the wrong order when they ran at once (a client's job worker beside a
    user's ``predict``). So the first CPU stream of the process sets it (``cores // streams``) and nothing
    changes it afterwards. ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` in the environment is the user's own
    choice: then torch is left as it is. A value set with ``torch.set_num_threads`` after that first stream is
    kept too. ``None`` (a GPU engine) touches nothing.
    """
    global _threads_configured
    if count is None:
        return
    with _threads_lock:
        if _threads_configured:
            return
        _threads_configured = True
        chosen = [name for name in THREAD_ENV_VARS if os.environ.get(name)]
        if chosen:
            log.info("%s is set: leaving torch's thread count as it is", chosen[0])
            return
        import torch

        torch.set_num_threads(count)
        log.info("torch intra-op threads set to %d for this process", count)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """A block that runs torch as the engine's streams do (the benchmarks time forward passes alone with it):
    :func:`configure_torch_threads`; nothing is restored after the block."""
    configure_torch_threads(count)
    yield


def inference_mode(predictor: Any) -> contextlib.AbstractContextManager:
    """torch's inference mode for a predictor that runs torch; nothing for one that does not (an ONNX detector on
    the CPU: its run never imports torch)."""
    if not predictor.uses_torch:
        return contextlib.nullcontext()
    import torch

    return torch.inference_mode()


@dataclasses.dataclass
class _Loaded:
    seq: int  # position in this stream, for re-ordering
    item: Item
    prepared: Any = None
    width: int = 0
    height: int = 0
    text: str | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """Per-call settings of :meth:`Engine.predict`, validated.

    ``iou_threshold`` and ``max_det`` apply to boxes, ``top_k`` to classifications (the best k classes left
    after filtering; ``None`` keeps all), ``aggregation`` to named entities (as the transformers pipeline's
    ``aggregation_strategy``), ``text_reading`` to how text files split into items.
    """

    label_filter: LabelFilter
    iou_threshold: float = 0.7
    max_det: int = 300
    top_k: int | None = 5
    aggregation: str = DEFAULT_AGGREGATION
    text_reading: TextReading = TextReading()

    def __post_init__(self) -> None:
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise ConfigError(f"iou_threshold must be between 0 and 1, got {self.iou_threshold}")
        if self.max_det < 1:
            raise ConfigError(f"max_det must be at least 1, got {self.max_det}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be at least 1 (or None for all classes), got {self.top_k}")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")

    def postprocess_options(self) -> dict[str, Any]:
        """What every predictor's ``postprocess`` receives as keyword arguments."""
        return {
            "score_floor": self.label_filter.score_floor,
            "iou": self.iou_threshold,
            "max_det": self.max_det,
            "aggregation": self.aggregation,
            # a chain (detector -> segmenter) prompts its second model with the boxes this filter will keep
            "label_filter": self.label_filter,
        }


def is_prompted(spec: ModelSpec) -> bool:
    """Whether ``spec``'s model is prompted (its labels are texts it looks for, chosen per run: open-vocabulary
    detectors, zero-shot classifiers), as the class that will run its weights says; loads nothing. Weights that
    are not on this machine (a Ray cluster's) leave the answer to the registered class."""
    predictor_class = get_predictor_class(spec.model_type, spec.backend)
    try:
        predictor_class = predictor_class.for_weights(spec, resolve_weights(spec))
    except AvalaInferError:
        pass
    return bool(predictor_class.prompted)


def prompted_vocabulary(predictor_class: type, spec: ModelSpec, vocabulary: Sequence[str]) -> tuple[str, ...]:
    """``vocabulary`` checked for a prompted model: names, at least one, none twice."""
    if not getattr(predictor_class, "prompted", False):
        raise ConfigError(
            f"model {spec.name!r} ({spec.model_type.value}, {spec.backend}) has a fixed vocabulary: a vocabulary is "
            "for prompted models (open-vocabulary detectors, zero-shot classifiers); filter this model's labels "
            "with labels= instead"
        )
    names = tuple(str(name).strip() for name in vocabulary)
    if not names or not all(names):
        raise ConfigError(f"model {spec.name!r} needs a vocabulary of one or more non-empty labels, got {vocabulary!r}")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"vocabulary of model {spec.name!r} lists {twice} more than once")
    return names


class Engine:
    """Loads one model and streams predictions for any number of inputs.

    >>> engine = Engine("yolo11n", device="cuda")                       # doctest: +SKIP
    >>> for pred in engine.predict(paths, confidence_threshold=0.85, labels=["car"]):  # doctest: +SKIP
    ...     print(pred.source, pred.detections.xyxy)

    ``model`` is a model name from the specs, a spec ``.yaml`` path, or a ``.pt``/``.onnx`` weights path.
    ``device`` is ``auto`` (CUDA when present: ``cuda:0``), ``cpu``, ``cuda`` or ``cuda:N``, or several GPUs:
    ``cuda:0,1``, a list such as ``["cuda:0", "cuda:2"]``, or ``all`` (every CUDA device; an error on a host
    without one, as ``cuda`` is: see :mod:`avala_infer.engine.devices`). ``batch_size``,
    ``input_size``, ``precision`` and ``letterbox`` override the spec. ``workers`` is the number of
    loader threads that read and decode ahead of the model (default: :func:`default_workers`). ``streams`` is
    how many batches run in the model at once: on a CPU ``min(4, cores)`` by default, each with
    ``cores // streams`` threads (ONNX Runtime sessions get that count; torch's process-wide intra-op count is set
    to it once, by the first CPU stream in the process, and never restored: see :func:`configure_torch_threads`);
    on a GPU 1. ``threads`` replaces
    ``cores // streams`` on a CPU: a process given a share of the host's cores (a Ray actor) sizes its model to it.
    The thread that iterates the predictions only reads items, batches and dispatches: the batches run on threads of
    the engine's (with one stream on a GPU, ``stage_threads``: collate, forward and postprocess each on its own,
    overlapping).
    ``close()`` (or a ``with`` block) releases the model and stops those threads; a closed engine refuses to
    predict.

    The threads that run batches start with the engine's first stream and are kept until ``close()``: a caller
    that predicts many times (a job, chunk by chunk) starts none per call, and what torch keeps per thread stays
    warm from call to call (``torch.compile``'s CUDA graph trees are one per thread and device: they are recorded
    on a device's forward thread once and replayed by every later stream). A generator closed early leaves them
    as they were, for the next stream; several streams of one engine may run at once and share them.

    Several GPUs: one predictor per device, loaded here one after the other, each with its own threads (on a GPU
    collate, forward and postprocess). The one loader pool and batcher feed them all: each batch goes to the
    device with the fewest of this stream's batches in flight (a device that is done sooner gets the next one
    sooner, and a slow one never holds the others up), and predictions come out in input order as on one device.
    Each device halves its own batches on out-of-memory errors; ``engine.device`` reads ``cuda:0,cuda:1`` then,
    ``engine.devices`` is the tuple and ``engine.predictor`` the first device's.

    Batches on a GPU: the spec's ``batch_size`` and ``letterbox`` are the CPU's. On CUDA the defaults are a batch
    of 64 (:data:`CUDA_BATCH_SIZE`) and ``square`` letterboxing, with a batcher window of 8 batches instead of 4;
    a ``batch_size`` or ``letterbox`` argument wins on any device. The trade-off: ``rect`` pads each image only
    to a multiple of the stride, as ultralytics' predict does, so boxes equal the reference's (the parity tests
    run it; it stays the default on a CPU, where smaller inputs are faster). But rect gives many input shapes
    (~14 on COCO) and only images of one shape can share a forward pass, so a batch of 32 averages ~12 images.
    ``square`` pads every image to ``input_size`` x ``input_size``: one shape, full batches, more pixels per
    image (the padding is computed too); boxes move by a fraction of a pixel and the scores slightly, and
    coco128's mAP50-95 stays within 0.005 of rect's (``tests/test_gpu_batching.py``). If a batch runs out of
    GPU memory it is halved and retried (down to one item; no item is lost), and the stream keeps the smaller
    size from then on.
    ``trust_weights=True`` loads a pickled checkpoint (``.pt``) from outside the model folders for this engine
    (a pickle runs code: see :mod:`avala_infer.trust`); without it such a file is an ``UntrustedWeightsError``.
    ``decode`` is where JPEGs are decoded: ``cpu`` (the loader threads; the default until measured on a GPU),
    ``gpu`` (the model's CUDA device, in the collate stage; YOLO ``.pt`` models: see
    :mod:`avala_infer.engine.device_decode`) or ``auto`` (``gpu`` where it can run, else ``cpu``).
    ``vocabulary`` is a prompted model's labels for this engine (open-vocabulary detectors, zero-shot
    classifiers: each label is a text prompt, or names the spec's ``params.prompts`` for it); it replaces the
    spec's ``labels``. A model with a fixed vocabulary refuses it (filter its labels with ``predict(labels=)``).
    """

    def __init__(
        self,
        model: str | os.PathLike | ModelSpec,
        *,
        device: str | Sequence[str] = "auto",
        batch_size: int | None = None,
        input_size: int | None = None,
        precision: str | None = None,
        letterbox: str | None = None,
        workers: int | None = None,
        streams: int | None = None,
        threads: int | None = None,
        trust_weights: bool = False,
        decode: str = "cpu",
        vocabulary: Sequence[str] | None = None,
    ) -> None:
        spec = model if isinstance(model, ModelSpec) else find_spec(model)
        self.spec = spec.with_overrides(
            batch_size=batch_size, input_size=input_size, precision=precision, letterbox=letterbox
        )
        weights = resolve_weights(self.spec)
        check_weights(self.spec, weights, trust=trust_weights)  # before anything reads (or unpickles) them
        predictor_class = get_predictor_class(self.spec.model_type, self.spec.backend)
        self._predictor_class = predictor_class.for_weights(self.spec, weights)
        if vocabulary is not None:
            self.spec = self.spec.with_overrides(
                labels=prompted_vocabulary(self._predictor_class, self.spec, vocabulary)
            )
        self._weights = weights
        self.devices = resolve_devices(device)
        self.device = ",".join(self.devices)
        self.spec = self.spec.with_overrides(**batching_overrides(self.device, batch_size, letterbox))
        cores = os.cpu_count() or 1
        on_cpu = self.devices == ("cpu",)
        self.window_batches = WINDOW_BATCHES_CPU if on_cpu else WINDOW_BATCHES_CUDA
        self.streams = streams if streams is not None else (min(4, cores) if on_cpu else 1)
        if self.streams < 1:
            raise ConfigError(f"streams must be at least 1, got {self.streams}")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        self.cpu_threads = (threads or max(1, cores // self.streams)) if on_cpu else None
        # one stream's collate, forward and postprocess on threads of their own (see _Lane.chain): on a GPU the host
        # work then overlaps the device's; on a CPU the stages would only take cores from the forward pass
        self.stage_threads = not on_cpu
        # JPEGs decoded on the device in the collate stage (engine/device_decode.py); tests set it on a CPU engine
        self.decode_on_device = device_decode_for(decode, self.devices, self._predictor_class, self.spec.name)
        self._lock = threading.Lock()  # closing, and starting a device's threads
        self._closed = False
        self._lanes: list[_Lane] = []
        try:
            for one in self.devices:
                self._lanes.append(_Lane(self, one, self._load_predictor(one)))
        except BaseException:  # a later device failed to load: the ones loaded go now, not at some later collection
            for lane in self._lanes:
                lane.release()
            raise
        self.workers = workers if workers is not None else default_workers(cores, on_cpu)
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")

    def _load_predictor(self, device: str):
        t0 = time.perf_counter()
        # "avala_infer.status": one-line progress the CLI shows (silent in a library unless logging is set up)
        status.info("loading %s on %s ...", self.spec.name, device, extra={"status": "start"})
        predictor = self._predictor_class(self.spec, self._weights, device, threads=self.cpu_threads)
        elapsed = time.perf_counter() - t0
        status.info("loaded %s in %.2fs", predictor.describe(), elapsed, extra={"status": "done", "s": elapsed})
        return predictor

    def _add_device(self, device: str) -> None:
        """Load one more predictor, on ``device``, beside the engine's others. For tests: a second ``cpu`` (which
        :func:`~avala_infer.engine.devices.resolve_devices` refuses) runs the several-device dispatch on a host
        without GPUs. Before the first stream only."""
        self._check_open()
        self._lanes.append(_Lane(self, device, self._load_predictor(device)))
        self.devices = (*self.devices, device)
        self.device = ",".join(self.devices)

    @property
    def predictor(self):
        """The loaded model's predictor (with several devices, the first one's: they are alike but for the
        device); an :class:`AvalaInferError` once the engine is closed."""
        self._check_open()
        return self._lanes[0].predictor

    def _closed_error(self) -> AvalaInferError:
        return _closed_error(self.spec.name)

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the engine's threads and release the model (on every device: the predictor with its weights,
        ONNX Runtime session and stream replicas; on a GPU the cached device memory too). Calling it again does
        nothing. Each thread stops after the batch it is on; a stream still running fails at its next item or
        batch with :class:`AvalaInferError`, as later calls to predict do."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for lane in self._lanes:
            lane.stop()
        for lane in self._lanes:
            lane.release()
        cuda = [device for device in self.devices if device.startswith("cuda")]
        if cuda:
            import gc

            import torch

            gc.collect()  # the model's tensors go now, so empty_cache can hand their memory back
            for device in cuda:
                with torch.cuda.device(device):
                    torch.cuda.empty_cache()
        log.info("closed %s", self.spec.name)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def model_type(self):
        return self.spec.model_type

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's class names, in class-id order."""
        return self.predictor.labels

    @property
    def batch_size(self) -> int:
        return self.predictor.spec.batch_size

    def build_filter(
        self,
        *,
        confidence_threshold: float = 0.25,
        labels: Sequence[str] | None = None,
        label_thresholds: Mapping[str, float] | None = None,
        label_map: Mapping[str, str | None] | None = None,
    ) -> LabelFilter:
        """Compile a filter against this model's labels (raises on unknown names)."""
        return build_filter(
            self.labels,
            confidence_threshold=confidence_threshold,
            labels=labels,
            label_thresholds=label_thresholds,
            label_map=label_map,
        )

    def predict_options(
        self,
        *,
        confidence_threshold: float = 0.25,
        iou_threshold: float = 0.7,
        labels: Sequence[str] | None = None,
        label_thresholds: Mapping[str, float] | None = None,
        label_map: Mapping[str, str | None] | None = None,
        max_det: int = 300,
        top_k: int | None = 5,
        aggregation: str = DEFAULT_AGGREGATION,
        text_field: str = "text",
        per_line: bool = False,
    ) -> PredictOptions:
        """Validated options for :meth:`stream`; raises on bad thresholds or unknown label names."""
        return PredictOptions(
            self.build_filter(
                confidence_threshold=confidence_threshold,
                labels=labels,
                label_thresholds=label_thresholds,
                label_map=label_map,
            ),
            iou_threshold=float(iou_threshold),
            max_det=int(max_det),
            top_k=None if top_k is None else int(top_k),
            aggregation=str(aggregation).lower(),
            text_reading=TextReading(per_line=bool(per_line), field=str(text_field)),
        )

    def predict(
        self,
        sources: Source | Iterable[Source],
        *,
        confidence_threshold: float = 0.25,
        iou_threshold: float = 0.7,
        labels: Sequence[str] | None = None,
        label_thresholds: Mapping[str, float] | None = None,
        label_map: Mapping[str, str | None] | None = None,
        max_det: int = 300,
        top_k: int | None = 5,
        aggregation: str = DEFAULT_AGGREGATION,
        text_field: str = "text",
        per_line: bool = False,
    ) -> Iterator[Prediction]:
        """Stream one :class:`Prediction` per input item, in input order, as batches finish.

        ``sources``: files, folders (recursive), glob patterns, BGR uint8 arrays (image models), or
        :class:`~avala_infer.Text` strings (text models; see :meth:`predict_texts`). Arguments are checked
        here, before any work; an item that cannot be read yields a prediction with ``error`` set.
        """
        options = self.predict_options(
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
        return self.run(sources, options)

    def predict_texts(self, texts: Iterable[str], **options: Any) -> Iterator[Prediction]:
        """:meth:`predict` over literal strings (each one item), for text models."""
        if isinstance(texts, str):
            texts = [texts]
        wrapped = [Text(t) for t in texts] if isinstance(texts, (list, tuple)) else (Text(t) for t in texts)
        return self.predict(wrapped, **options)

    def run(self, sources: Source | Iterable[Source], options: PredictOptions) -> Iterator[Prediction]:
        """:meth:`predict` with options made by :meth:`predict_options`."""
        if isinstance(sources, (str, os.PathLike, np.ndarray)):
            sources = [sources]
        media = self.model_type.media
        if isinstance(sources, (list, tuple)):  # generators stream through unchecked
            check_sources_fit(sources, media, self.spec.name)
        return self.stream(iter_items(sources, media, options.text_reading), options)

    def stream(
        self, items: Iterable[Item], options: PredictOptions, *, on_image: ImageCallback | None = None
    ) -> Iterator[Prediction]:
        """The pipeline over already enumerated items (used by :meth:`predict` and by job runners).

        Predictions come out in the order the items went in, whatever their ``index`` values. A closed engine
        raises here, before any work.

        ``on_image(position, image)``, when given, hands the decoded pictures along: it is called on a loader
        thread with each image item's position in this stream (0 for the first item) and its BGR array, once the
        item is ready for the model. A sink that draws items (the dry-run preview) keeps what it needs of it (a
        thumbnail of the items it shows) instead of reading and decoding the file again. It must be quick and
        thread-safe and must not change or keep the array; an error in it stops the stream.
        """
        self._check_open()
        return self._stream(items, options, on_image)

    def _stream(
        self, items: Iterable[Item], options: PredictOptions, on_image: ImageCallback | None = None
    ) -> Iterator[Prediction]:
        """This thread reads ``items``, hands them to the loader threads, batches what they return and submits
        the batches to the devices' threads (see :meth:`_Lane.chain`), where collate, forward and postprocess +
        filter run; so the thread that iterates does little more than move items and predictions along."""
        if self.predictor.uses_torch:  # before a first stream starts the threads that run torch
            configure_torch_threads(self.cpu_threads)
        lanes = self._lanes
        batch_size = self.batch_size
        batch_key = self.predictor.batch_key
        batcher: ShapeBatcher[_Loaded] = ShapeBatcher(
            lambda loaded: batch_key(loaded.prepared), batch_size, window=self.window_batches * batch_size
        )
        # one limit per device, lowered for the rest of this stream when a batch runs out of its memory; batches
        # are made at the largest (a device with a lower one runs them in pieces)
        limits = [BatchLimit(batch_size) for _ in lanes]
        limit = limits[0] if len(limits) == 1 else _LargestLimit(limits)
        reorder: ReorderBuffer[tuple[int, Prediction]] = ReorderBuffer(lambda pair: pair[0])
        dispatch: BatchDispatch[list[_Loaded], list[tuple[int, Prediction]]] = BatchDispatch(
            [(lane.chain(), *lane.stages(options, lane_limit)) for lane, lane_limit in zip(lanes, limits)]
        )
        depth = max(2 * batch_size * self.streams * len(lanes), 2 * self.workers)
        try:
            with contextlib.closing(self._loaded(items, on_image, depth)) as loaded_items:
                for loaded in loaded_items:
                    self._check_open()  # closed meanwhile: stop here rather than fail every item
                    if loaded.error is not None:
                        reorder.put((loaded.seq, self._failed(loaded, loaded.error)))
                    else:
                        if limit.size < batcher.batch_size:
                            batcher.resize(limit.size)
                        for batch in batcher.add(loaded):
                            for finished in dispatch.submit(batch):
                                reorder.put_many(finished)
                    yield from (prediction for _, prediction in reorder.ready())
            self._check_open()
            for batch in batcher.flush():
                for finished in dispatch.submit(batch):
                    reorder.put_many(finished)
            for finished in dispatch.drain():
                reorder.put_many(finished)
            yield from (prediction for _, prediction in reorder.ready())
        finally:
            dispatch.close()  # this stream's batches not started are dropped; the threads stay for the next

    def _loaded(self, items: Iterable[Item], on_image: ImageCallback | None, depth: int) -> Iterator[_Loaded]:
        """``items`` read and prepared on the loader threads, in order, at most about ``depth`` in flight.

        Each loader task takes a run of consecutive items: this thread then waits for (and wakes up for) one task
        per run, not per item, and a predictor with ``prepare_many`` (text: one tokenizer call for many texts)
        prepares a whole run in one call. Runs stay short enough for ``2 * workers`` of them to be in flight.
        """
        if getattr(self.predictor, "prepare_many", None) is not None:
            size = PREPARE_CHUNK
        else:
            size = max(1, min(LOAD_CHUNK, depth // (2 * self.workers)))
        load = functools.partial(self._load_chunk, on_image=on_image)
        runs = _chunks(enumerate(items), size)
        with contextlib.closing(prefetch(runs, load, self.workers, max(2, depth // size))) as loaded:
            for run in loaded:
                yield from run

    def _load(self, numbered: tuple[int, Item], on_image: ImageCallback | None = None) -> _Loaded:
        seq, item = numbered
        loaded = _Loaded(seq, item)
        data = self._read(loaded, keep_jpeg=self.decode_on_device and on_image is None)
        if data is not None:
            try:
                t0 = time.perf_counter()
                if isinstance(data, EncodedJpeg):  # decoded on the device, in the batch's collate
                    loaded.prepared = pending(data, self.predictor)
                else:
                    loaded.prepared = self.predictor.prepare(data)
                loaded.timings["preprocess"] = (time.perf_counter() - t0) * 1e3
            except Exception as exc:  # a preprocessing fault fails this item only
                loaded.error = _reason(exc)
        self._hand_image(loaded, data, on_image)
        return loaded

    def _load_chunk(self, chunk: list[tuple[int, Item]], on_image: ImageCallback | None = None) -> list[_Loaded]:
        """:meth:`_load` for consecutive items. A predictor with ``prepare_many`` prepares them in one call; if that
        raises, each item is prepared alone, so only the items that fail alone fail."""
        if getattr(self.predictor, "prepare_many", None) is None:
            return [self._load(numbered, on_image) for numbered in chunk]
        loaded = [_Loaded(seq, item) for seq, item in chunk]
        datas = [self._read(one) for one in loaded]
        readable = [(one, data) for one, data in zip(loaded, datas) if data is not None]
        if readable:
            predictor = self.predictor
            t0 = time.perf_counter()
            try:
                prepared = predictor.prepare_many([data for _, data in readable])
                if len(prepared) != len(readable):
                    raise AvalaInferError(f"prepare_many gave {len(prepared)} results for {len(readable)} items")
            except Exception as exc:
                log.debug("prepare_many failed on %d items (%s); preparing them one by one", len(readable), exc)
                for one, data in readable:
                    t1 = time.perf_counter()
                    try:
                        one.prepared = predictor.prepare(data)
                        one.timings["preprocess"] = (time.perf_counter() - t1) * 1e3
                    except Exception as item_exc:
                        one.error = _reason(item_exc)
            else:
                share = (time.perf_counter() - t0) * 1e3 / len(readable)
                for (one, _), value in zip(readable, prepared):
                    one.prepared = value
                    one.timings["preprocess"] = share
        for one, data in zip(loaded, datas):
            self._hand_image(one, data, on_image)
        return loaded

    def _read(self, loaded: _Loaded, keep_jpeg: bool = False) -> Any:
        """The item's decoded image or text (``None``, with ``loaded.error`` set, when it cannot be read); with
        ``keep_jpeg`` a plain JPEG's bytes for the device to decode (an ``EncodedJpeg``)."""
        try:
            if self.model_type.media == "text":
                data = loaded.text = read_text(loaded.item, loaded.timings)
            else:
                data = read_image(loaded.item, loaded.timings, keep_jpeg=keep_jpeg)
                loaded.height, loaded.width = data.shape[:2]
            return data
        except Exception as exc:  # a decoder fault fails this item only
            loaded.error = _reason(exc)
            return None

    def _hand_image(self, loaded: _Loaded, data: Any, on_image: ImageCallback | None) -> None:
        if on_image is not None and loaded.error is None and isinstance(data, np.ndarray):
            on_image(loaded.seq, data)  # not in the item's try: a fault of the sink's is not the item's

    @staticmethod
    def _failed(loaded: _Loaded, reason: str) -> Prediction:
        item = loaded.item
        return Prediction(
            item.index,
            item.source,
            item.key,
            loaded.width,
            loaded.height,
            timings=loaded.timings,
            error=reason,
            text=loaded.text,
        )

    @staticmethod
    def _predictions(
        batch: list[_Loaded],
        results: Sequence[Any],
        options: PredictOptions,
        collate_s: float,
        forward_s: float,
        postprocess_s: float,
    ) -> list[Prediction]:
        """Filter each item's result and wrap it; the batch's stage times are shared evenly by its items."""
        n = len(batch)
        shared = {
            "collate": collate_s * 1e3 / n,
            "forward": forward_s * 1e3 / n,
            "postprocess": postprocess_s * 1e3 / n,
        }
        predictions = []
        for loaded, result in zip(batch, results):
            t4 = time.perf_counter()
            result = options.label_filter.apply(result)
            if isinstance(result, Classifications):
                result = result.top(options.top_k)
            timings = {**loaded.timings, **shared, "filter": (time.perf_counter() - t4) * 1e3}
            item = loaded.item
            predictions.append(
                Prediction(
                    item.index, item.source, item.key, loaded.width, loaded.height, result, timings, text=loaded.text
                )
            )
        return predictions


def default_workers(cores: int, on_cpu: bool) -> int:
    """Loader threads when the caller names none. On a CPU at most 8: the forward pass wants the cores. On a GPU
    every core but two (the engine's own threads: the main one and the collate, forward and postprocess stages,
    which mostly wait), up to ``MAX_GPU_WORKERS``: decoding is then the ceiling, and the 8 threads a GPU run had
    until 2026-12 decoded 2,252 img/s on a 16-core H200 host where yolo11n's forward ran 5,146 img/s."""
    if on_cpu:
        return max(1, min(8, cores))
    return max(2, min(MAX_GPU_WORKERS, cores - 2))


def _numbered(batch: list[_Loaded], predictions: list[Prediction]) -> list[tuple[int, Prediction]]:
    """Each prediction with its item's position in the stream (the reorder buffer's key)."""
    return [(loaded.seq, prediction) for loaded, prediction in zip(batch, predictions)]


def _reason(exc: BaseException) -> str:
    """An item's error text: our own errors say it all; anything else is named."""
    return str(exc) if isinstance(exc, AvalaInferError) else f"{type(exc).__name__}: {exc}"


def _chunks(values: Iterable[T], size: int) -> Iterator[list[T]]:
    """``values`` in lists of ``size`` consecutive ones (the last may be shorter)."""
    iterator = iter(values)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


@dataclasses.dataclass(frozen=True)
class _Failure:
    """Why a whole batch failed, without the exception (its traceback holds the failed pass's tensors)."""

    reason: str
    out_of_memory: bool

    @classmethod
    def of(cls, exc: BaseException) -> _Failure:
        return cls(f"{type(exc).__name__}: {exc}", is_out_of_memory(exc))


def _closed_error(name: str) -> AvalaInferError:
    return AvalaInferError(f"this engine ({name}) is closed and its model released; create a new Engine to predict")


class _LargestLimit:
    """The largest of several devices' :class:`BatchLimit` s: the size a stream's batcher makes batches at."""

    def __init__(self, limits: Sequence[BatchLimit]) -> None:
        self.limits = limits

    @property
    def size(self) -> int:
        return max(limit.size for limit in self.limits)


def _use_cuda_device(device: str) -> None:
    """Make ``device`` this thread's current CUDA device: what a device's stage threads run first, so that what
    takes the current device (``empty_cache``, new events, CUDA graph trees' pools) takes theirs."""
    import torch

    torch.cuda.set_device(device)


class _Lane:
    """One device of an engine: its predictor, and from the engine's first stream on the threads that run its
    batches (:meth:`chain`), kept until the engine closes. Batches run here as :meth:`Engine._stream` hands them
    over, whole (:meth:`run_batch`) or stage by stage (:class:`_StagedBatches`), never on the consuming thread.

    Nothing the threads hold leads back to the engine (a lane holds its engine weakly, the chain only a device
    name and an error message): an engine dropped without ``close()`` is collected as before, model and all,
    and its threads then end (a finalizer stops them)."""

    def __init__(self, engine: Engine, device: str, predictor: Any) -> None:
        self._engine = weakref.ref(engine)
        self.device = device
        self._predictor = predictor
        self._chain: StageChain | None = None

    @property
    def engine(self) -> Engine:
        engine = self._engine()
        if engine is None:  # only a batch of a stream that outlived its engine could see this; none can
            raise AvalaInferError(f"the engine of device {self.device} is gone")
        return engine

    @property
    def predictor(self):
        self.engine._check_open()  # closed: the stream stops with the engine's error (see _run_piece, _failure)
        return self._predictor

    def chain(self) -> StageChain:
        """This device's threads, started on first use (after :func:`configure_torch_threads`: a new thread takes
        torch's thread count from the process when it first runs torch).

        With ``stage_threads`` (a GPU's default): collate, forward and postprocess + filter each on a thread of
        its own, so the device runs batch i+1 while the host postprocesses batch i and collates batch i+2 (on CUDA
        the copy to the device goes on a side stream: see :class:`_StagedBatches`). Otherwise each batch runs
        whole on one of ``streams`` threads, side by side (a CPU's default): there the stages would run beside
        each other on the cores the forward pass uses, and torch's OpenMP teams and onnxruntime's spinning threads
        slow each other down many times over (measured here on 2 cores: the postprocess of a batch took 70x
        longer beside an ONNX forward pass).
        """
        engine = self.engine
        with engine._lock:
            engine._check_open()
            if self._chain is None:
                if engine.stage_threads:
                    depth, width, name = 3, 1, "avala-stage"
                else:
                    depth, width, name = 1, engine.streams, ("avala-forward" if engine.streams > 1 else "avala-batch")
                cuda = self.device.startswith("cuda")
                where = self.device  # the test engines' second "cpu" is told apart by its position
                if engine.devices.count(self.device) > 1:
                    where = f"{self.device}.{engine._lanes.index(self)}"
                self._chain = StageChain(
                    depth,
                    width=width,
                    name=f"{name}@{where}",
                    on_start=functools.partial(_use_cuda_device, self.device) if cuda else None,
                    closed_error=functools.partial(_closed_error, engine.spec.name),
                )
                weakref.finalize(engine, self._chain.close, wait=False)  # dropped unclosed: the threads end too
            return self._chain

    def stages(self, options: PredictOptions, limit: BatchLimit) -> tuple[list[Callable[[Any], Any]], int]:
        """One stream's stage functions for :meth:`chain`'s threads, and how many of its batches they may hold."""
        chain = self.chain()
        if chain.depth == 3:
            staged = _StagedBatches(self, options, limit)
            return [staged.collate, staged.forward, staged.postprocess], STAGE_CAPACITY
        run_whole = functools.partial(self.run_numbered, options=options, limit=limit)
        return [run_whole], WHOLE_BATCHES_PER_THREAD * len(chain.threads)

    def stop(self) -> None:
        """Stop the threads (each after the batch it is on; the batches queued fail with the closed error)."""
        with self.engine._lock:
            chain, self._chain = self._chain, None
        if chain is not None:
            chain.close()

    def release(self) -> None:
        """Release the predictor (its weights, session, replicas), once the threads are stopped."""
        predictor, self._predictor = self._predictor, None
        release = getattr(predictor, "close", None)
        if callable(release):
            release()

    def run_numbered(
        self, batch: list[_Loaded], *, options: PredictOptions, limit: BatchLimit
    ) -> list[tuple[int, Prediction]]:
        return _numbered(batch, self.run_batch(batch, options, limit))

    def run_batch(self, batch: list[_Loaded], options: PredictOptions, limit: BatchLimit) -> list[Prediction]:
        """Run one batch, in pieces of at most ``limit`` items, one prediction per item in batch order."""
        return [p for piece in limit.split(batch) for p in self._run_piece(piece, options, limit)]

    def _run_piece(self, batch: list[_Loaded], options: PredictOptions, limit: BatchLimit) -> list[Prediction]:
        """Run items that fit the limit (collate, forward, postprocess here, on this thread); on a failure see
        :meth:`retry`."""
        try:
            return self._forward_batch(batch, options)
        except Exception as exc:
            if self.engine.closed:  # the engine was closed under us: the stream stops, items did not fail
                raise
            failure = _Failure.of(exc)
        # retried out of the except block: the traceback, and with it the failed pass's tensors, is gone by now
        return self.retry(batch, failure, options, limit)

    def retry(
        self, batch: list[_Loaded], failure: _Failure, options: PredictOptions, limit: BatchLimit
    ) -> list[Prediction]:
        """After ``batch`` failed as a whole. Out of device memory: lower the limit to half the batch, free the
        cached memory and run both halves (down to one item, which then fails alone). Any other failure: run
        its items one by one so only the bad ones fail."""
        reason = failure.reason
        if failure.out_of_memory:
            self.release_cached_memory()
            if len(batch) > 1:
                half = (len(batch) + 1) // 2
                if limit.lower(half):
                    log.warning(
                        "out of memory on %s with a batch of %d: batches of at most %d for the rest of this stream",
                        self.device, len(batch), half,
                    )  # fmt: skip
                return self.run_batch(batch[:half], options, limit) + self.run_batch(batch[half:], options, limit)
        if len(batch) == 1:
            log.warning("item %s failed in the model: %s", batch[0].item.source, reason)
            return [Engine._failed(batch[0], f"model failed on this item: {reason}")]
        log.warning("a batch of %d failed (%s); retrying its items one by one", len(batch), reason)
        return [p for loaded in batch for p in self._run_piece([loaded], options, limit)]

    def release_cached_memory(self) -> None:
        """Hand the memory torch caches on this GPU back, so the smaller retry can use it (nothing on a CPU)."""
        if self.device.startswith("cuda"):
            import torch

            with torch.cuda.device(self.device):
                torch.cuda.empty_cache()

    def _forward_batch(self, batch: list[_Loaded], options: PredictOptions) -> list[Prediction]:
        predictor = self.predictor
        prepared = [loaded.prepared for loaded in batch]
        t0 = time.perf_counter()
        with inference_mode(predictor):
            inputs = predictor.collate(prepared)
            t1 = time.perf_counter()
            raw = predictor.forward(inputs)
            t2 = time.perf_counter()
            results = predictor.postprocess(raw, prepared, **options.postprocess_options())
        t3 = time.perf_counter()
        return Engine._predictions(batch, results, options, t1 - t0, t2 - t1, t3 - t2)


@dataclasses.dataclass
class _Staged:
    """One batch on its way through :class:`_StagedBatches`: what each stage hands the next."""

    items: list[_Loaded]
    inputs: Any = None
    raw: Any = None
    ready: Any = None  # CUDA: an event on the stream of the stage before, recorded once its work was queued
    collate_s: float = 0.0
    forward_s: float = 0.0
    failure: _Failure | None = None  # the batch failed in collate or forward: retried in the next stage
    predictions: list[Prediction] | None = None  # made already (by a retry): later stages pass them on


class _StagedBatches:
    """The stages of one stream's batches, each run by its own :class:`StageChain` thread: ``collate`` (on CUDA on
    a side stream, so the copy to the device overlaps the forward pass before it), ``forward`` (the model's
    stream, batches in order), ``postprocess`` + filter (on CUDA on a stream of its own: its reads of the device
    wait for this batch's forward, not for the one the forward thread has queued since).

    A batch that fails in a stage is retried by the next stage, as :meth:`Engine._run_piece` does (halved when
    out of memory, else item by item), with every step on that stage's thread; a batch larger than the
    :class:`BatchLimit` (it was collated before an out-of-memory error lowered the limit) runs in pieces that
    fit. Until its postprocess is done a batch keeps its inputs: on CUDA the forward pass reads them on another
    stream than the one they were made on, and a freed block may be reused at once by its own stream.
    """

    def __init__(self, lane: _Lane, options: PredictOptions, limit: BatchLimit) -> None:
        self.lane = lane  # the device this stream's batches run on here
        self.options = options
        self.limit = limit
        self.device = lane.device
        self.copy_stream = self.post_stream = None
        if self.device.startswith("cuda"):
            import torch

            self.copy_stream = torch.cuda.Stream(self.device)
            self.post_stream = torch.cuda.Stream(self.device)

    def collate(self, batch: list[_Loaded]) -> _Staged:
        staged = _Staged(batch)
        if len(batch) > self.limit.size:
            return staged  # the forward stage runs it in pieces
        t0 = time.perf_counter()
        try:
            with self._running_on(self.copy_stream):
                prepared = [loaded.prepared for loaded in batch]
                if has_pending(prepared):  # JPEGs to decode on the device (engine/device_decode.py)
                    staged.inputs = self._collate_pending(staged, prepared)
                else:
                    staged.inputs = self.lane.predictor.collate(prepared)
                staged.ready = self._mark(self.copy_stream)
        except Exception as exc:
            staged.failure = self._failure(exc)
        staged.collate_s = time.perf_counter() - t0
        return staged

    def _collate_pending(self, staged: _Staged, prepared: list[Any]) -> Any:
        """The batch's input, its pending JPEGs decoded on this device. An item that no decoder takes (device, then
        CPU) fails alone, naming its file: the batch's other items then run here and now, through the predictor's
        own collate (rare: a damaged JPEG), and ``staged.predictions`` holds the batch's predictions."""
        pictures = decode_pending(prepared, self.device)
        failed = {i: picture for i, picture in enumerate(pictures) if isinstance(picture, Exception)}
        if not failed:
            inputs = collate_on_device(pictures, self.lane.predictor.fp16)
            drop_device_pictures(prepared)
            return inputs
        good = [loaded for i, loaded in enumerate(staged.items) if i not in failed]
        done = iter(self.lane.run_batch(good, self.options, self.limit) if good else ())
        staged.predictions = [
            Engine._failed(loaded, _reason(failed[i])) if i in failed else next(done)
            for i, loaded in enumerate(staged.items)
        ]
        drop_device_pictures(prepared)
        return None

    def forward(self, staged: _Staged) -> _Staged:
        lane, options, limit = self.lane, self.options, self.limit
        if staged.failure is not None:
            staged.predictions = lane.retry(staged.items, staged.failure, options, limit)
        elif len(staged.items) > limit.size:
            staged.predictions = lane.run_batch(staged.items, options, limit)
        if staged.predictions is not None:
            return staged
        t0 = time.perf_counter()
        failure = None
        try:
            with self._running_on(None):
                self._wait(staged.ready)
                staged.raw = lane.predictor.forward(staged.inputs)
                staged.ready = self._mark(None)
        except Exception as exc:
            failure = self._failure(exc)
        staged.forward_s = time.perf_counter() - t0
        if failure is not None:  # retried out of the except block: the failed pass's tensors are gone by now
            staged.inputs = None
            staged.predictions = lane.retry(staged.items, failure, options, limit)
        return staged

    def postprocess(self, staged: _Staged) -> list[tuple[int, Prediction]]:
        lane, options = self.lane, self.options
        if staged.predictions is None:
            prepared = [loaded.prepared for loaded in staged.items]
            t0 = time.perf_counter()
            failure = None
            try:
                with self._running_on(self.post_stream):
                    self._wait(staged.ready)
                    results = lane.predictor.postprocess(staged.raw, prepared, **options.postprocess_options())
                    if self.post_stream is not None:
                        self.post_stream.synchronize()  # every read of this batch's tensors is done
            except Exception as exc:
                failure = self._failure(exc)
            postprocess_s = time.perf_counter() - t0
            staged.raw = staged.inputs = None
            if failure is not None:
                staged.predictions = lane.retry(staged.items, failure, options, self.limit)
            else:
                staged.predictions = Engine._predictions(
                    staged.items, results, options, staged.collate_s, staged.forward_s, postprocess_s
                )
        return _numbered(staged.items, staged.predictions)

    def _failure(self, exc: BaseException) -> _Failure:
        if self.lane.engine.closed:  # closed under us: the stream stops (raised in the consumer); items did not fail
            raise exc
        return _Failure.of(exc)

    @contextlib.contextmanager
    def _running_on(self, stream: Any) -> Iterator[None]:
        """Inference mode (it is per thread), and on CUDA ``stream`` as this thread's current stream (``None``: the
        device's default stream, the model's)."""
        import torch

        with torch.inference_mode():
            if stream is None:
                yield
            else:
                with torch.cuda.stream(stream):
                    yield

    def _mark(self, stream: Any) -> Any:
        """On CUDA: an event recorded on ``stream`` (``None``: the default stream) after the work queued so far."""
        if not self.device.startswith("cuda"):
            return None
        import torch

        event = torch.cuda.Event()
        event.record(stream if stream is not None else torch.cuda.default_stream(self.device))
        return event

    def _wait(self, event: Any) -> None:
        """Make this thread's current CUDA stream wait (on the device, not here) for ``event``."""
        if event is not None:
            import torch

            torch.cuda.current_stream(self.device).wait_event(event)
