"""Group items that can share a forward pass, and give results back in input order."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class ShapeBatcher(Generic[T]):
    """Collects items into per-key buckets (a key is, for instance, the letterboxed shape).

    A bucket leaves as a batch when it holds ``batch_size`` items; when more than ``window`` items wait in
    all buckets, the bucket holding the oldest item leaves early, so no item waits for long and the
    reorder buffer downstream stays small.
    """

    def __init__(self, key: Callable[[T], Hashable], batch_size: int, window: int) -> None:
        self.key = key
        self.batch_size = batch_size
        self.window = max(window, batch_size)
        self.buckets: dict[Hashable, list[T]] = {}  # insertion order = age of each bucket's oldest item
        self.waiting = 0

    def add(self, value: T) -> list[list[T]]:
        """Add one item; return the batches that are ready to run (often none)."""
        k = self.key(value)
        bucket = self.buckets.setdefault(k, [])
        bucket.append(value)
        self.waiting += 1
        ready = []
        if len(bucket) >= self.batch_size:
            ready.append(self._take(k))
        while self.waiting > self.window:
            ready.append(self._take(next(iter(self.buckets))))
        return ready

    def flush(self) -> list[list[T]]:
        """Every waiting item, as batches, oldest bucket first."""
        return [self._take(k) for k in list(self.buckets)]

    def _take(self, k: Hashable) -> list[T]:
        batch = self.buckets.pop(k)
        self.waiting -= len(batch)
        return batch


class ReorderBuffer(Generic[T]):
    """Holds results that finished early until every result before them is out."""

    def __init__(self, index: Callable[[T], int]) -> None:
        self.index = index
        self.next = 0
        self.held: dict[int, T] = {}

    def put(self, value: T) -> None:
        self.held[self.index(value)] = value

    def ready(self) -> Iterator[T]:
        while self.next in self.held:
            yield self.held.pop(self.next)
            self.next += 1

    def __len__(self) -> int:
        return len(self.held)
