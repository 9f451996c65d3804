"""Group items that can share a forward pass, run the batches, and give results back in input order."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class ShapeBatcher(Generic[T]):
    """Collects items into per-key buckets (a key is, for instance, the letterboxed shape).

    A bucket leaves as a batch when it holds ``batch_size`` items. The bucket holding the oldest waiting item
    leaves early when more than ``window`` items wait in all buckets, or when ``window`` items have arrived since
    that oldest one: so a lone item of a rare shape waits at most ``window`` arrivals (not until the end of the
    input while the common shape's buckets keep filling and leaving), and the reorder buffer downstream, which
    holds every result behind the oldest unfinished item, stays small.
    """

    def __init__(self, key: Callable[[T], Hashable], batch_size: int, window: int) -> None:
        self.key = key
        self.batch_size = batch_size
        self.window = max(window, batch_size)
        self.buckets: dict[Hashable, list[T]] = {}  # insertion order = age of each bucket's oldest item
        self.waiting = 0
        self.added = 0  # items added so far
        self.oldest: dict[Hashable, int] = {}  # bucket -> arrival number of its oldest item

    def add(self, value: T) -> list[list[T]]:
        """Add one item; return the batches that are ready to run (often none)."""
        k = self.key(value)
        if k not in self.buckets:
            self.buckets[k] = []
            self.oldest[k] = self.added
        self.buckets[k].append(value)
        self.added += 1
        self.waiting += 1
        ready = []
        if len(self.buckets[k]) >= self.batch_size:
            ready.append(self._take(k))
        while self.buckets:
            first = next(iter(self.buckets))
            if self.waiting <= self.window and self.added - self.oldest[first] <= self.window:
                break
            ready.append(self._take(first))
        return ready

    def resize(self, batch_size: int) -> None:
        """Let later batches leave at ``batch_size`` (a :class:`BatchLimit` lowered it). A bucket that already
        holds more leaves whole with its next item; the runner splits it to the limit."""
        self.batch_size = max(1, batch_size)

    def flush(self) -> list[list[T]]:
        """Every waiting item, as batches, oldest bucket first."""
        return [self._take(k) for k in list(self.buckets)]

    def _take(self, k: Hashable) -> list[T]:
        batch = self.buckets.pop(k)
        del self.oldest[k]
        self.waiting -= len(batch)
        return batch


class BatchLimit:
    """The largest batch the model is given in one stream: the configured size until a batch runs out of device
    memory, then lowered (halved, down to 1) and kept low for the rest of the stream, so one out-of-memory error
    costs one retry instead of one per batch. Thread-safe: several batches may run at once."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._lock = threading.Lock()

    def lower(self, size: int) -> bool:
        """Lower the limit to ``size`` (at least 1); whether it was higher (the caller logs only then)."""
        with self._lock:
            if size >= self.size:
                return False
            self.size = max(1, size)
            return True

    def split(self, batch: list[T]) -> list[list[T]]:
        """``batch`` in order, as pieces of at most the limit (one piece when it fits)."""
        size = self.size
        return [batch[i : i + size] for i in range(0, len(batch), size)] if len(batch) > size else [batch]


class ReorderBuffer(Generic[T]):
    """Holds results that finished early until every result before them is out."""

    def __init__(self, index: Callable[[T], int]) -> None:
        self.index = index
        self.next = 0
        self.held: dict[int, T] = {}

    def put(self, value: T) -> None:
        self.held[self.index(value)] = value

    def put_many(self, values: list[T]) -> None:
        for value in values:
            self.put(value)

    def ready(self) -> Iterator[T]:
        while self.next in self.held:
            yield self.held.pop(self.next)
            self.next += 1

    def __len__(self) -> int:
        return len(self.held)


class ConcurrentRunner(Generic[T, R]):
    """Runs ``fn(batch)`` for up to ``streams`` batches at once, each on its own thread.

    On a CPU, several forward passes side by side, each with few threads, keep every core busy better than one
    pass spread over all cores (measured here: onnxruntime +30-45%, torch +10-15% on 2 cores). With one stream
    (the default on a GPU) batches run inline, on the caller's thread. At most ``2 * streams`` batches are in
    flight, so a stream never waits for the next batch and memory stays bounded.
    """

    def __init__(self, fn: Callable[[T], R], streams: int) -> None:
        self.fn = fn
        self.streams = max(1, streams)
        self.pool = (
            ThreadPoolExecutor(max_workers=self.streams, thread_name_prefix="avala-forward")
            if self.streams > 1
            else None
        )
        self.inflight: set[Future] = set()

    def submit(self, batch: T) -> list[R]:
        """Start ``batch``; return the results that are finished by now (maybe none)."""
        if self.pool is None:
            return [self.fn(batch)]
        self.inflight.add(self.pool.submit(self.fn, batch))
        if len(self.inflight) >= 2 * self.streams:
            wait(self.inflight, return_when=FIRST_COMPLETED)
        return self._harvest()

    def drain(self) -> list[R]:
        """Wait for every batch in flight and return their results."""
        wait(self.inflight)
        return self._harvest()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _harvest(self) -> list[R]:
        done = {f for f in self.inflight if f.done()}
        self.inflight -= done
        return [f.result() for f in done]


class _Failed:
    """What a stage raised, handed to the stream whose batch it was, in place of the batch's result."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_STOP = object()  # put by ``StageChain.close``: the thread that takes it ends
_DROPPED = object()  # the answer for a batch whose stream was closed, or failed, before the batch ran


class _Job:
    """One batch on its way through a :class:`StageChain`: the stages of its stream, and where its answer goes."""

    __slots__ = ("dispatch", "lane", "stages", "value")

    def __init__(self, dispatch: BatchDispatch, lane: int, stages: Sequence[Callable[[Any], Any]], value: Any) -> None:
        self.dispatch = dispatch
        self.lane = lane
        self.stages = stages
        self.value = value


class StageChain:
    """Threads that run batches through ``depth`` stages in turn, each stage on a thread of its own: while one
    batch is in the last stage the next is in the one before, and so on (a GPU engine: collate batch i+2, forward
    batch i+1, postprocess batch i). Each stage takes batches one at a time, in the order they came. With
    ``depth`` 1, ``width`` threads may share the one stage (a CPU engine's side-by-side streams; then batches
    finish in any order).

    The threads are started here and kept until :meth:`close`: an engine holds one chain per device for its
    whole life, so a caller that predicts many times (a job, chunk by chunk) starts no thread per call, and
    what torch keeps per thread (CUDA graph trees: one per thread and device) stays warm from call to call. The
    chain knows nothing of the batches' work: each batch brings its stream's stage functions along (see
    :class:`BatchDispatch`), so streams with different options share the threads, one after the other or at
    once. ``on_start`` runs first on each thread (a GPU engine makes the thread's current CUDA device its own).

    ``close`` stops every thread, each after the batch it is on, and waits for them; the batches still queued
    are answered with ``closed_error()`` (their streams raise it), and a chain once closed takes no batch.
    """

    def __init__(
        self,
        depth: int,
        *,
        width: int = 1,
        name: str = "avala-stage",
        on_start: Callable[[], None] | None = None,
        closed_error: Callable[[], BaseException] | None = None,
    ) -> None:
        if depth < 1 or width < 1 or (depth > 1 and width > 1):
            raise ValueError(f"a chain has at least one stage, and one thread per stage when it has several: "
                             f"depth {depth}, width {width}")  # fmt: skip
        self.depth = depth
        self.on_start = on_start
        self.closed_error = closed_error or (lambda: RuntimeError("these stage threads are closed"))
        self._inboxes: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in range(depth)]
        self._lock = threading.Lock()
        self._closed = False
        counts = [width] if depth == 1 else [1] * depth
        self._threads: list[list[threading.Thread]] = []
        number = 0
        for stage, count in enumerate(counts):
            threads = []
            for _ in range(count):
                threads.append(threading.Thread(target=self._work, args=(stage,), name=f"{name}-{number}", daemon=True))
                number += 1
            self._threads.append(threads)
        for thread in self.threads:
            thread.start()

    @property
    def threads(self) -> list[threading.Thread]:
        return [thread for threads in self._threads for thread in threads]

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, job: _Job) -> None:
        """Queue ``job`` for the first stage; a closed chain raises ``closed_error()``."""
        with self._lock:  # never after close() has queued the threads' stop
            if self._closed:
                raise self.closed_error()
            self._inboxes[0].put(job)

    def close(self, wait: bool = True) -> None:
        """Stop every thread (each after the batch it is on) and wait for them (``wait=False``: only tell them,
        as a finalizer must, which may run on one of them). Calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not wait:  # each thread ends at its stop (a finalizer's case: no stream is running, none holds a batch)
            for stage, threads in enumerate(self._threads):
                for _ in threads:
                    self._inboxes[stage].put(_STOP)
            return
        for stage, threads in enumerate(self._threads):  # stage by stage: what one stage passes on is in the next
            for _ in threads:  # inbox before that inbox's stops are
                self._inboxes[stage].put(_STOP)
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _work(self, stage: int) -> None:
        unusable: BaseException | None = None
        if self.on_start is not None:
            try:
                self.on_start()
            except BaseException as exc:  # every batch this thread takes fails with it (none waits forever)
                unusable = exc
        inbox = self._inboxes[stage]
        outbox = self._inboxes[stage + 1] if stage + 1 < self.depth else None
        while True:
            job = inbox.get()
            if job is _STOP:
                return
            self._take(job, stage, outbox, unusable)
            # an idle thread holds nothing of the last batch: its memory (tensors, masks) goes with its stream, and
            # a thread ending at interpreter exit frees no tensor then (torch's deallocation waiting for the GIL
            # while the interpreter shuts down aborts the process)
            del job

    def _take(self, job: _Job, stage: int, outbox: queue.SimpleQueue | None, unusable: BaseException | None) -> None:
        """Run ``job``'s ``stage`` and pass it on (or answer its stream)."""
        dispatch = job.dispatch
        if dispatch.cancelled.is_set():
            dispatch.answer(job.lane, _DROPPED)
        elif self._closed or unusable is not None:
            dispatch.answer(job.lane, _Failed(unusable or self.closed_error()))
        else:
            try:
                job.value = job.stages[stage](job.value)
            except BaseException as exc:  # handed to the stream, which raises it; its later batches are dropped
                dispatch.cancelled.set()
                dispatch.answer(job.lane, _Failed(exc))
                return
            if outbox is None:
                dispatch.answer(job.lane, job.value)
            else:
                outbox.put(job)


class BatchDispatch(Generic[T, R]):
    """One stream's batches, run on the stage chains of one or more devices (``lanes``: a chain, the stage
    functions of this stream for it, and how many of this stream's batches it may hold at once).

    Each batch goes to the lane with the fewest batches in flight for its capacity (the first such lane on a
    tie): a device that finishes sooner gets the next batch sooner, and a slow device never holds the others up,
    as a round robin would. ``submit`` blocks only while every lane is full, which bounds the memory the batches
    in flight hold; it returns the results finished by then, in the order they finished (the engine's reorder
    buffer puts them back in input order). If a stage raises, the batches of this stream behind it are dropped
    and the exception is raised here, by ``submit`` or ``drain``. ``close`` (always call it: the engine does in
    a ``finally``) drops this stream's batches not started and waits for the ones running; the chains stay up
    for the engine's next stream.
    """

    def __init__(self, lanes: Sequence[tuple[StageChain, Sequence[Callable[[Any], Any]], int]]) -> None:
        if not lanes:
            raise ValueError("a dispatch needs at least one lane")
        self._chains = [chain for chain, _, _ in lanes]
        self._stages = [list(stages) for _, stages, _ in lanes]
        for chain, stages in zip(self._chains, self._stages):
            if len(stages) != chain.depth:
                raise ValueError(f"{len(stages)} stage functions for a chain of {chain.depth} stages")
        self.capacity = [max(1, capacity) for _, _, capacity in lanes]
        self.inflight = [0] * len(lanes)
        self.cancelled = threading.Event()
        self._answers: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, batch: T) -> list[R]:
        """Start ``batch`` on the freest lane (waiting while all are full); the results finished by now."""
        results: list[R] = []
        lane = self._free_lane(results)
        self._chains[lane].put(_Job(self, lane, self._stages[lane], batch))
        self.inflight[lane] += 1
        results += self._collect(block=False)
        return results

    def drain(self) -> list[R]:
        """Wait for every batch in flight and return their results."""
        results: list[R] = []
        while any(self.inflight):
            results += self._collect(block=True)
        return results

    def close(self) -> None:
        """Drop this stream's batches not started yet and wait for the ones running (their results are lost)."""
        self.cancelled.set()
        while any(self.inflight):
            lane, _ = self._answers.get()
            self.inflight[lane] -= 1

    def answer(self, lane: int, value: Any) -> None:
        """From a chain's thread: what became of one of this stream's batches."""
        self._answers.put((lane, value))

    def _free_lane(self, results: list[R]) -> int:
        lanes = range(len(self.inflight))
        while True:
            lane = min(lanes, key=lambda i: self.inflight[i] / self.capacity[i])
            if self.inflight[lane] < self.capacity[lane]:
                return lane
            results += self._collect(block=True)

    def _collect(self, block: bool) -> list[R]:
        """The answers in by now; with ``block``, waiting for one first."""
        results: list[R] = []
        while any(self.inflight):
            try:
                lane, value = self._answers.get(block=block)
            except queue.Empty:
                break
            block = False
            self.inflight[lane] -= 1
            if isinstance(value, _Failed):
                raise value.exc
            if value is not _DROPPED:
                results.append(value)
        return results
