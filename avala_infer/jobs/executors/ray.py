"""The Ray executor: a job's predictions computed by actors of a Ray cluster (``pip install avala-infer[ray]``).

The driver (the ``avala-infer worker --executor ray`` process) turns the job's remaining tasks into a Ray dataset
of small rows (sequence number, item path or URI, key, text of text records: never the bytes of an image, which
each actor reads itself), and ``map_batches`` runs them through :class:`EngineActor`, an actor wrapping our
:class:`~avala_infer.engine.Engine`: one GPU per actor on a cluster with GPUs (as many actors as GPUs), else
one CPU per actor (as many actors as CPUs), or ``concurrency`` actors when given. Predictions stream back to the
driver as the actors finish blocks; the job runner commits them to the store in batches exactly as it commits
the local engine's (results, job_tasks and counters in one transaction per batch), so cancel, progress, resume
after a driver's death and the filters are the runner's, unchanged.

At-least-once: Ray restarts an actor that dies and runs its blocks again, so a prediction may come back twice.
The driver drops a sequence number it has seen, and the store's per-task idempotence (one ``job_tasks`` row,
one result per task and job) makes a block done again after a driver restart harmless.

Only the driver writes the store: actors need the model (weights and specs where the engine finds them), the
items (a shared filesystem, or URIs: see :mod:`.uris`) and avala-infer itself, never the store's folder.
``import ray`` happens here only, when a Ray job runs.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from avala_infer.annotations import Prediction
from avala_infer.engine import Engine
from avala_infer.engine.sources import Item
from avala_infer.errors import ConfigError
from avala_infer.jobs.executors.uris import Scratch, is_uri

log = logging.getLogger(__name__)

FETCH_THREADS = 8  # URIs an actor fetches at once
BATCHES_PER_CALL = 2  # engine batches per actor call (one dataset block): the engine overlaps reading and the model


NO_RAY = "the ray executor needs Ray: pip install 'avala-infer[ray]' (on the driver and every node)"


def check_installed() -> None:
    """A :class:`ConfigError` now, without importing Ray, when it is not installed (a worker started with
    ``--executor ray`` says so at once, not at its first job)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ConfigError(NO_RAY)


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(NO_RAY) from None
    return ray


class RayExecutor:
    """Runs jobs' engines as Ray actors. ``address``: ``auto`` (a cluster started with ``ray start``),
    ``host:port``, ``ray://host:10001`` (Ray Client), or None (``RAY_ADDRESS`` when set, else a local cluster in
    this process). ``concurrency``: the number of actors (None: one per GPU, else one per ``cpus_per_actor`` CPUs
    of the cluster). A CPU actor runs its engine with one stream on its CPUs (Ray sets its ``OMP_NUM_THREADS``)."""

    name = "ray"

    def __init__(self, *, address: str | None = None, concurrency: int | None = None, cpus_per_actor: int = 1) -> None:
        if concurrency is not None and int(concurrency) < 1:
            raise ConfigError(f"concurrency must be at least 1 actor, got {concurrency}")
        if int(cpus_per_actor) < 1:
            raise ConfigError(f"cpus_per_actor must be at least 1, got {cpus_per_actor}")
        self.address = address
        self.cpus_per_actor = int(cpus_per_actor)
        self.concurrency = None if concurrency is None else int(concurrency)
        self._connected = False

    def connect(self):
        """Join the cluster once (a driver already connected, as in tests, is used as it is); returns ``ray``."""
        ray = _ray()
        if not ray.is_initialized():
            ray.init(**({"address": self.address} if self.address else {}))
            self._connected = True
            from ray.data import DataContext

            DataContext.get_current().enable_progress_bars = False  # a worker's stderr is a log, not a terminal
        return ray

    def close(self) -> None:
        """Leave the cluster if this executor joined it (the cluster itself keeps running)."""
        if self._connected:
            _ray().shutdown()
            self._connected = False

    def load(self, model: str, device: str) -> RayEngine:
        return RayEngine(self, model, device)

    def placement(self, device: str) -> tuple[str, dict[str, Any], int]:
        """The actors' device, their resources and their count on this cluster for the worker's ``device``."""
        resources = self.connect().cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        on_gpu = device.startswith("cuda") or device == "all" or (device == "auto" and gpus > 0)
        if on_gpu and gpus == 0:
            raise ConfigError(f"device {device!r} needs GPUs but the Ray cluster has none; use --device cpu or auto")
        if on_gpu:  # an actor sees only the GPU Ray gives it, as cuda:0
            return "cuda", {"num_gpus": 1}, self.concurrency or gpus
        return "cpu", {"num_cpus": self.cpus_per_actor}, self.concurrency or max(1, cpus // self.cpus_per_actor)

    def predictions(
        self, model: str, device: str, resources: dict[str, Any], concurrency: int, batch_size: int,
        items: Iterable[Item], options: Any,
    ) -> Iterator[Prediction]:  # fmt: skip
        """The predictions of ``items``, in the order the actors finish them, each sequence number once."""
        ray = self.connect()
        rows = [{"seq": item.index, "source": item.source, "key": item.key, "text": item.text} for item in items]
        if not rows:
            return
        # blocks of a few engine batches, but enough of them that every actor gets work
        per_call = max(1, min(batch_size * BATCHES_PER_CALL, math.ceil(len(rows) / concurrency)))
        blocks = math.ceil(len(rows) / per_call)
        concurrency = min(concurrency, blocks)
        dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        dataset = dataset.map_batches(
            EngineActor,
            fn_constructor_kwargs={"model": model, "device": device, "options": options, "resources": resources},
            batch_size=per_call,
            compute=ray.data.ActorPoolStrategy(size=concurrency),  # a fixed pool (``concurrency=`` is deprecated)
            **resources,
        )
        batches = dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
        seen: set[int] = set()
        try:
            for batch in batches:
                for seq, blob in zip(batch["seq"].tolist(), batch["prediction"]):
                    if seq in seen:  # a block an actor did again after a restart
                        continue
                    seen.add(seq)
                    yield pickle.loads(blob)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # stops the dataset: a cancelled or stopped job leaves no actor working for it


class RayEngine:
    """The driver's side of a Ray job's engine: what the job runner asks of an engine (the model's type, labels
    and batch size, options, a stream of predictions), with the model loaded in the actors, not here. The labels
    come from one remote load of the model on the cluster (the driver may have no GPU, or not the memory)."""

    def __init__(self, executor: RayExecutor, model: str, device: str) -> None:
        self.executor = executor
        self.model = model
        self.device, self.resources, self.concurrency = executor.placement(device)
        ray = executor.connect()
        describe = ray.remote(**self.resources)(_describe)
        self.spec, self._labels = ray.get(describe.remote(model, self.device))
        self.name = self.spec.name
        self._local: Engine | None = None
        log.info("%s runs on %d Ray actor(s) on %s", self.name, self.concurrency, self.device)

    @property
    def model_type(self):
        return self.spec.model_type

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def batch_size(self) -> int:
        return self.spec.batch_size

    # the engine's own option building (it needs only ``labels``), so filters are the local engine's exactly
    build_filter = Engine.build_filter
    predict_options = Engine.predict_options

    def stream(self, items: Iterable[Item], options: Any, *, on_image: Any = None) -> Iterator[Prediction]:
        """Predictions of ``items`` from the actors, in the order they finish (each carries its item's index).

        A dry run (``on_image``: its preview draws the decoded pictures) runs on an engine in this process: the
        pictures would otherwise cross the network to be drawn here."""
        if on_image is not None:
            if self._local is None:
                self._local = Engine(self.model, device="auto")
            return self._local.stream(items, options, on_image=on_image)
        return self.executor.predictions(
            self.model, self.device, self.resources, self.concurrency, self.batch_size, items, options
        )

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None


def _describe(model: str, device: str) -> tuple[Any, tuple[str, ...]]:
    """On the cluster: the model's spec (as the actors will run it) and labels."""
    with Engine(model, device=device) as engine:
        return engine.spec, tuple(engine.labels)


class EngineActor:
    """A Ray Data actor: our engine, loaded once, run over blocks of rows; it returns each prediction pickled,
    with its sequence number. Paths are read here (shared filesystem); URIs fetched here first."""

    def __init__(self, model: str, device: str, options: Any, resources: dict[str, Any]) -> None:
        cpus = int(resources.get("num_cpus", 0))
        # a CPU actor is one of the cluster's "streams": one batch at a time on the cores Ray gave it
        engine_args = {"streams": 1, "workers": 2 * cpus} if cpus else {}
        self.engine = Engine(model, device=device, **engine_args)
        self.options = options
        self.scratch: Scratch | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns = zip(batch["seq"].tolist(), batch["source"], batch["key"], batch["text"])
        rows = [
            (int(seq), str(source), str(key), None if text is None else str(text)) for seq, source, key, text in columns
        ]
        uris = {seq: source for seq, source, _, text in rows if text is None and is_uri(source)}
        if uris:  # fetch the block's URIs side by side: an object store is slow per request, not per byte
            if self.scratch is None:
                self.scratch = Scratch()
            with ThreadPoolExecutor(min(FETCH_THREADS, len(uris))) as pool:
                items = list(pool.map(lambda row: self._item(*row), rows))
        else:
            items = [self._item(*row) for row in rows]
        seqs, blobs = [], []
        try:
            for prediction in self.engine.stream(items, self.options):
                if prediction.index in uris:  # the fetched copy's path is a detail of this actor
                    prediction.source = uris[prediction.index]
                seqs.append(prediction.index)
                blobs.append(pickle.dumps(prediction, protocol=pickle.HIGHEST_PROTOCOL))
        finally:
            if self.scratch is not None:
                self.scratch.clear()
        return {"seq": np.asarray(seqs, dtype=np.int64), "prediction": np.asarray(blobs, dtype=object)}

    def _item(self, seq: int, source: str, key: str, text: str | None) -> Item:
        if text is not None or not is_uri(source):
            return Item(seq, source, key, text=text)
        try:
            return Item(seq, str(self.scratch.fetch(source)), key)
        except Exception as exc:  # no reader (MissingReader), no object, no access: this item fails alone
            return Item(seq, source, key, error=f"cannot read {source}: {exc}")
