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
    """What a stage raised, carried down the chain to the caller in place of the batch's result."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_STOP = object()  # down the chain from ``close``: each stage passes it on and ends


class StageChain(Generic[T, R]):
    """Runs every submitted batch through ``stages`` in turn, each stage on a thread of its own: while one batch
    is in the last stage the next is in the one before, and so on (a GPU engine: collate batch i+2, forward
    batch i+1, postprocess batch i). Each stage handles batches one at a time, in the order submitted.

    The caller's thread only submits and collects, like :class:`ConcurrentRunner`'s: ``submit`` returns the
    results finished by then and blocks only while ``capacity`` batches are in flight, which bounds the memory
    the stages hold. The queues between stages need no bound of their own: nothing enters the chain past that
    limit. If a stage raises, the batches behind it are dropped and the exception is raised in the caller, by
    ``submit`` or ``drain``; ``close`` (always call it: the engine does in a ``finally``) stops every thread,
    each after the batch it is on, and waits for them.
    """

    def __init__(self, stages: Sequence[Callable[[Any], Any]], capacity: int, name: str = "avala-stage") -> None:
        self.capacity = max(1, capacity)
        self.inflight = 0
        self._inboxes: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in stages]
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = threading.Event()
        outboxes = [*self._inboxes[1:], self._done]
        self._threads = [
            threading.Thread(target=self._work, args=(stage, inbox, outbox), name=f"{name}-{i}", daemon=True)
            for i, (stage, inbox, outbox) in enumerate(zip(stages, self._inboxes, outboxes))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, batch: T) -> list[R]:
        """Start ``batch``; return the results that are finished by now (maybe none)."""
        self._inboxes[0].put(batch)
        self.inflight += 1
        return self._collect(wait_for_one=self.inflight >= self.capacity)

    def drain(self) -> list[R]:
        """Wait for every batch in flight and return their results."""
        results = []
        while self.inflight:
            results += self._collect(wait_for_one=True)
        return results

    def close(self) -> None:
        """Stop every stage (the batches not started are dropped) and wait for their threads."""
        self._stopping.set()
        self._inboxes[0].put(_STOP)
        for thread in self._threads:
            thread.join()

    def _collect(self, wait_for_one: bool) -> list[R]:
        results = []
        while self.inflight:
            try:
                value = self._done.get(block=wait_for_one and not results)
            except queue.Empty:
                break
            self.inflight -= 1
            if isinstance(value, _Failed):
                raise value.exc
            results.append(value)
        return results

    def _work(self, stage: Callable[[Any], Any], inbox: queue.SimpleQueue, outbox: queue.SimpleQueue) -> None:
        while True:
            value = inbox.get()
            if value is _STOP:
                outbox.put(_STOP)
                return
            if not isinstance(value, _Failed):
                if self._stopping.is_set():
                    continue  # closing, or a stage before failed: the rest is dropped
                try:
                    value = stage(value)
                except BaseException as exc:  # handed to the caller, who decides (it stops the chain)
                    self._stopping.set()
                    value = _Failed(exc)
            outbox.put(value)
