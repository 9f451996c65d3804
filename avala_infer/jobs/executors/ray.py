"""The Ray executor: a job's predictions computed by actors of a Ray cluster (``pip install avala-infer[ray]``).

The driver (the ``avala-infer worker --executor ray`` process) feeds the job's remaining tasks to a Ray dataset
as small rows (sequence number, item path or URI, key, text of text records: never the bytes of an image, which
each actor reads itself), a page per actor call and a window of pages in flight (:mod:`.ray_feed`: the driver's
memory does not grow with the job), and ``map_batches`` runs them through :class:`EngineActor`, an actor wrapping
our :class:`~avala_infer.engine.Engine`: one GPU per actor on a cluster with GPUs (as many actors as GPUs), else
one CPU per actor (as many actors as CPUs), or ``concurrency`` actors when given. Predictions stream back to the
driver as the actors finish pages; the job runner commits them to the store in batches exactly as it commits
the local engine's (results, job_tasks and counters in one transaction per batch), so cancel, progress, resume
after a driver's death and the filters are the runner's, unchanged. A Ray Client driver (``ray://``) runs the
dataset in a small actor on the cluster (:class:`ClusterPipeline`) and feeds and drains it the same way.

At-least-once: Ray restarts an actor that dies and runs its pages again, so a prediction may come back twice.
The driver keeps only a sequence number still in flight, and the store's per-task idempotence (one
``job_tasks`` row, one result per task and job) makes a page done again after a driver restart harmless.

Only the driver writes the store: actors need the model (weights and specs where the engine finds them), the
items (a shared filesystem, or URIs: see :mod:`.uris`) and avala-infer itself, never the store's folder.
``import ray`` happens here only, when a Ray job runs.
"""

from __future__ import annotations

import itertools
import logging
import math
import pickle
import time
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
WINDOW_CALLS = 4  # actor calls' worth of rows in flight per actor: enough to keep it busy, the driver's memory flat
# seconds before each new try when a Ray Client server refuses to start this driver's session (see connect)
CLIENT_RETRY_DELAYS_S = (1.0, 3.0, 9.0)


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
    of the cluster). A CPU actor runs its engine with one stream, onnxruntime and torch on as many threads as
    it has CPUs."""

    name = "ray"

    def __init__(self, *, address: str | None = None, concurrency: int | None = None, cpus_per_actor: int = 1) -> None:
        if concurrency is not None and int(concurrency) < 1:
            raise ConfigError(f"concurrency must be at least 1 actor, got {concurrency}")
        if int(cpus_per_actor) < 1:
            raise ConfigError(f"cpus_per_actor must be at least 1, got {cpus_per_actor}")
        if address and address.startswith("ray://"):
            import importlib.util

            if importlib.util.find_spec("grpc") is None:  # else Ray fails at the first job, obscurely
                raise ConfigError(f"{address} is a Ray Client address: it needs pip install 'ray[client]'")
        self.address = address
        self.cpus_per_actor = int(cpus_per_actor)
        self.concurrency = None if concurrency is None else int(concurrency)
        self._connected = False

    def connect(self):
        """Join the cluster once (a driver already connected, as in tests, is used as it is); returns ``ray``.

        A Ray Client server (``ray://``) starts a server process of its own for each driver; that start can fail
        for reasons of the server's (seen here: gRPC aborting the server's fork, "Starting Ray client server
        failed", in one of 11 runs of ``tests/test_ray_executor.py`` on a 2-core host), and a new session then
        starts. So a ``ray://`` driver whose session the server aborts tries again, ``len(CLIENT_RETRY_DELAYS_S)``
        times, before the error reaches the job."""
        ray = _ray()
        if not ray.is_initialized():
            client = bool(self.address) and self.address.startswith("ray://")
            for delay in (*CLIENT_RETRY_DELAYS_S, None) if client else (None,):
                try:
                    ray.init(**({"address": self.address} if self.address else {}))
                    break
                except ConnectionAbortedError as exc:  # the server's "Initialization failure from server"
                    if delay is None:
                        raise
                    log.warning("Ray Client %s did not start a session (%s); trying again in %g s", self.address,
                                str(exc).splitlines()[-1], delay)  # fmt: skip
                    if ray.is_initialized():
                        ray.shutdown()
                    time.sleep(delay)
            self._connected = True
            from ray.data import DataContext

            DataContext.get_current().enable_progress_bars = False  # a worker's stderr is a log, not a terminal
        return ray

    def close(self) -> None:
        """Leave the cluster if this executor joined it (the cluster itself keeps running)."""
        if self._connected:
            _ray().shutdown()
            self._connected = False

    def load(self, model: str, device: str, *, vocabulary: tuple[str, ...] | None = None) -> RayEngine:
        """The driver's side of ``model``'s engine on the cluster; ``vocabulary``: a prompted model's labels."""
        return RayEngine(self, model, device, vocabulary)

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
        items: Iterable[Item], options: Any, vocabulary: tuple[str, ...] | None = None,
    ) -> Iterator[Prediction]:  # fmt: skip
        """The predictions of ``items``, in the order the actors finish them, each sequence number once.

        ``items`` is read as the actors go (see :mod:`.ray_feed`): at most a window of rows is in flight, read
        from ``items`` a page (one actor call) at a time as the actors return predictions."""
        ray = self.connect()
        per_call = batch_size * BATCHES_PER_CALL
        window = concurrency * per_call * WINDOW_CALLS
        source = iter(items)
        first = [_row(item) for item in itertools.islice(source, window)]
        if not first:
            return
        if len(first) < window:  # the whole job: pages small enough that every actor gets work
            per_call = max(1, min(per_call, math.ceil(len(first) / concurrency)))
            concurrency = min(concurrency, math.ceil(len(first) / per_call))
        from avala_infer.jobs.executors.ray_feed import RowFeed

        feed = RowFeed()
        in_flight: set[int] = set()  # sent, not yet returned: a sequence number not in it is a repeat

        def top_up(rows: Iterator[Row]) -> None:
            while len(in_flight) < window and not feed.ended:
                page = list(itertools.islice(rows, per_call))
                if page:
                    feed.put(pickle.dumps(page, protocol=pickle.HIGHEST_PROTOCOL))
                    in_flight.update(row[0] for row in page)
                if len(page) < per_call:
                    feed.end()

        rows = itertools.chain(first, (_row(item) for item in source))
        args = (feed.queue, model, device, options, resources, concurrency, vocabulary)
        if _is_client(ray):  # Ray Data runs its executor on a driver with a core worker, which a client has not
            pipeline = ray.remote(num_cpus=0)(ClusterPipeline).remote(*args)
            batches = iter(lambda: ray.get(pipeline.next.remote()), None)
        else:
            pipeline, batches = None, prediction_pages(*args)
        try:
            top_up(rows)
            for pages in batches:
                fresh = []
                for page in pages:
                    for prediction in pickle.loads(page):
                        if prediction.index in in_flight:  # else a page an actor did again after a restart
                            in_flight.discard(prediction.index)
                            fresh.append(prediction)
                top_up(rows)  # before the runner commits: the actors keep working meanwhile
                yield from fresh
        finally:
            # stop the dataset: a cancelled or stopped job leaves no actor working for it (a killed pipeline
            # actor takes the actors it owns with it)
            if pipeline is not None:
                ray.kill(pipeline)
            else:
                batches.close()
            feed.close()


def prediction_pages(
    queue: Any, model: str, device: str, options: Any, resources: dict[str, Any], concurrency: int,
    vocabulary: tuple[str, ...] | None = None,
) -> Iterator[list[bytes]]:  # fmt: skip
    """The job's dataset where it runs: the pages put on ``queue`` through ``concurrency`` :class:`EngineActor`
    actors; each batch that comes back, as its pages of pickled predictions."""
    import ray

    from avala_infer.jobs.executors.ray_feed import page_dataset

    dataset = page_dataset(queue).map_batches(
        EngineActor,
        fn_constructor_kwargs={
            "model": model,
            "device": device,
            "options": options,
            "resources": resources,
            "vocabulary": vocabulary,
        },  # fmt: skip
        batch_size=1,  # one page per call
        compute=ray.data.ActorPoolStrategy(size=concurrency),  # a fixed pool (``concurrency=`` is deprecated)
        **resources,
    )
    batches = dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
    try:
        for batch in batches:
            yield list(batch["page"])
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # stops the dataset's execution and its actors


class ClusterPipeline:
    """:func:`prediction_pages` in an actor on the cluster, for a Ray Client driver (``ray://``): the client
    feeds the queue and asks for each batch of pages in turn; ``None`` after the last."""

    def __init__(self, *args: Any) -> None:
        self.pages = prediction_pages(*args)

    def next(self) -> list[bytes] | None:
        return next(self.pages, None)


def _is_client(ray) -> bool:
    """Whether this process joined its cluster through Ray Client."""
    from ray.util.client import ray as client

    return client.is_connected()


Row = tuple[int, str, str, str | None]  # an item as an actor gets it: sequence number, path or URI, key, text


def _row(item: Item) -> Row:
    """What an actor needs to read an item, never its bytes."""
    return (item.index, item.source, item.key, item.text)


class RayEngine:
    """The driver's side of a Ray job's engine: what the job runner asks of an engine (the model's type, labels
    and batch size, options, a stream of predictions), with the model loaded in the actors, not here. The labels
    come from one remote load of the model on the cluster (the driver may have no GPU, or not the memory)."""

    def __init__(
        self, executor: RayExecutor, model: str, device: str, vocabulary: tuple[str, ...] | None = None
    ) -> None:
        self.executor = executor
        self.model = model
        self.vocabulary = vocabulary
        self.device, self.resources, self.concurrency = executor.placement(device)
        ray = executor.connect()
        describe = ray.remote(**self.resources)(_describe)
        self.spec, self._labels = ray.get(describe.remote(model, self.device, vocabulary))
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
                self._local = Engine(self.model, device="auto", vocabulary=self.vocabulary)
            return self._local.stream(items, options, on_image=on_image)
        return self.executor.predictions(
            self.model, self.device, self.resources, self.concurrency, self.batch_size, items, options,
            self.vocabulary,
        )  # fmt: skip

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None


def _describe(model: str, device: str, vocabulary: tuple[str, ...] | None) -> tuple[Any, tuple[str, ...]]:
    """On the cluster: the model's spec (as the actors will run it) and labels."""
    with Engine(model, device=device, vocabulary=vocabulary) as engine:
        return engine.spec, tuple(engine.labels)


class EngineActor:
    """A Ray Data actor: our engine, loaded once, run over pages of rows; it returns each page's predictions
    pickled (each carries its row's sequence number). Paths are read here (shared filesystem); URIs are fetched
    here first."""

    def __init__(
        self, model: str, device: str, options: Any, resources: dict[str, Any],
        vocabulary: tuple[str, ...] | None = None,
    ) -> None:  # fmt: skip
        cpus = int(resources.get("num_cpus", 0))
        if cpus:  # a CPU actor is one of the node's "streams": one batch at a time on the cores Ray gave it
            self.engine = Engine(model, device=device, vocabulary=vocabulary, threads=cpus, streams=1, workers=2 * cpus)
        else:
            self.engine = Engine(model, device=device, vocabulary=vocabulary)
        self.options = options
        self.scratch: Scratch | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Pages of rows (pickled) in, a page of predictions (pickled) out for each."""
        pages = [
            pickle.dumps(self.predict(pickle.loads(page)), protocol=pickle.HIGHEST_PROTOCOL) for page in batch["page"]
        ]
        return {"page": np.asarray(pages, dtype=object)}

    def predict(self, rows: list[Row]) -> list[Prediction]:
        """The predictions of one page's rows (each carries its row's sequence number as ``index``)."""
        uris = {seq: source for seq, source, _, text in rows if text is None and is_uri(source)}
        if uris:  # fetch the page's URIs side by side: an object store is slow per request, not per byte
            if self.scratch is None:
                self.scratch = Scratch()
            with ThreadPoolExecutor(min(FETCH_THREADS, len(uris))) as pool:
                items = list(pool.map(lambda row: self._item(*row), rows))
        else:
            items = [self._item(*row) for row in rows]
        predictions = []
        try:
            for prediction in self.engine.stream(items, self.options):
                if prediction.index in uris:  # the fetched copy's path is a detail of this actor
                    prediction.source = uris[prediction.index]
                predictions.append(prediction)
        finally:
            if self.scratch is not None:
                self.scratch.clear()
        return predictions

    def _item(self, seq: int, source: str, key: str, text: str | None) -> Item:
        if text is not None or not is_uri(source):
            return Item(seq, source, key, text=text)
        try:
            return Item(seq, str(self.scratch.fetch(source)), key)
        except Exception as exc:  # no reader (MissingReader), no object, no access: this item fails alone
            return Item(seq, source, key, error=f"cannot read {source}: {exc}")
