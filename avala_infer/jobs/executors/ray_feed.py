"""A Ray job's rows fed to its dataset a window at a time, so the driver never holds the job's whole task list.

The driver reads the job's remaining tasks from the store in pages (the runner's ``items()``); a Ray Data source
with one read task turns the pages the driver puts on a queue (a small async actor) into blocks, waiting on the
queue between pages. The driver puts a page in for each one the actors finish, keeping a fixed window of rows in
flight: its memory (and the queue's) is the window's, whether the job has two thousand tasks or twenty million.

A page travels as one dataset row (its rows pickled): Ray Data gathers a read task's blocks until they reach
the dataset's ``target_max_block_size`` before it passes them on (128 MiB by default: the whole job, here, while
the read task waits for pages the driver sends only once predictions come back). This dataset's target is a few
bytes, so each page goes on at once; a one-row block is never sliced smaller.
Imported only when a Ray job runs (it imports ``ray``).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from ray.data import Dataset, read_datasource
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.util.queue import Queue

END = None  # the page after the last: the read task returns, the dataset's input ends
BLOCK_BYTES = 1  # this dataset's target_max_block_size: every one-page block (and every page of results) goes on


class _QueueSource(Datasource):
    """The pages of a :class:`RowFeed`'s queue as blocks, one block per page, until :data:`END`."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def estimate_inmemory_data_size(self) -> int | None:
        return None  # unknown: the driver has not read the job's tasks yet

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None):
        queue = self.queue

        def read():
            while (page := queue.get()) is not END:
                yield pa.table({"page": pa.array([page], type=pa.binary())})

        # one task: it only moves small rows (the actors read the items); more would split the pages among
        # readers that each wait on the queue, for nothing
        return [ReadTask(read, BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None))]


def page_dataset(queue: Queue) -> Dataset:
    """The pages put on ``queue`` as a dataset of one column, ``page``; the stages after it share its block
    target."""
    dataset = read_datasource(_QueueSource(queue), override_num_blocks=1, num_cpus=0)
    dataset.context.target_max_block_size = BLOCK_BYTES  # this dataset's own copy of the context
    return dataset


class RowFeed:
    """The driver's end: :meth:`put` a page (bytes: its rows pickled), :meth:`end` after the last, :meth:`close`
    when the job's stream stops (finished, cancelled or failed)."""

    def __init__(self) -> None:
        # no CPU: on a cluster whose CPUs are all the actors', the queue must still be placed
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.ended = False

    def put(self, page: bytes) -> None:
        self.queue.put(page)

    def end(self) -> None:
        if not self.ended:
            self.queue.put(END)
            self.ended = True

    def close(self) -> None:
        self.queue.shutdown(force=True)  # a read task still waiting on it fails: its dataset is stopped already
