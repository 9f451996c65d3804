"""Loaders: the only code that reads input bytes. They run ahead of the model in a bounded thread pool."""

from __future__ import annotations

import collections
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import cv2
import numpy as np

from avala_infer.engine.image_header import image_size
from avala_infer.engine.sources import Item
from avala_infer.errors import ItemError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

MAX_PIXELS = 1 << 28  # 268 megapixels: about 800 MB decoded; larger images fail their item


def _check_pixel_count(data: np.ndarray, source: str, max_pixels: int) -> None:
    """Refuse images over ``max_pixels`` from their header alone, before decoding."""
    size = image_size(memoryview(data))
    if size is not None and size[0] * size[1] > max_pixels:
        raise ItemError(
            f"{source} is {size[0]}x{size[1]} pixels, over the {max_pixels:,}-pixel limit; downscale it first"
        )


def read_image(item: Item, timings: dict[str, float], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read and decode one item to a BGR uint8 HxWx3 array (EXIF orientation applied, as cv2/ultralytics).

    Grayscale, RGBA and 16-bit images are converted; failures raise :class:`ItemError` with the reason.
    """
    if item.error:
        raise ItemError(item.error)
    t0 = time.perf_counter()
    if item.array is not None:
        image = item.array
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
        timings["read"] = timings["decode"] = 0.0
        return image
    try:
        data = np.fromfile(item.source, dtype=np.uint8)
    except OSError as exc:
        raise ItemError(f"cannot read {item.source}: {exc.strerror or exc}") from exc
    t1 = time.perf_counter()
    timings["read"] = (t1 - t0) * 1e3
    if data.size == 0:
        raise ItemError(f"{item.source} is empty (0 bytes)")
    _check_pixel_count(data, item.source, max_pixels)
    image, messages = decode_quietly(data)
    if isinstance(image, cv2.error):
        raise ItemError(f"cannot decode {item.source}: {image}") from image
    if image is None:
        said = f" ({'; '.join(messages)})" if messages else ""
        raise ItemError(f"cannot decode {item.source}: not an image, or corrupt or truncated{said}")
    incomplete = [m for m in messages if any(mark in m for mark in INCOMPLETE_MARKS)]
    if incomplete:
        raise ItemError(
            f"{item.source} is a damaged image ({'; '.join(messages)}): part of the picture is missing, so it is not "
            "labeled; re-export or re-download it"
        )
    if messages:
        log.warning("%s: %s (decoded anyway; check the file)", item.source, "; ".join(messages))
    timings["decode"] = (time.perf_counter() - t1) * 1e3
    return image


# The codecs inside cv2 (libjpeg, libpng...) print their warnings with fprintf to the process's stderr (fd 2):
# "Corrupt JPEG data: 5 extraneous bytes before marker 0xd9", "Premature end of JPEG file", "libpng warning: ...".
# cv2 has no switch for that, and fd 2 belongs to the whole process, so each decode runs with fd 2 pointed at a
# capture file, under a lock (the decodes are serialized: about 1.5 ms for a 640x480 JPEG here, so the loader
# threads decode at most some 650 such images/s; reading the file and letterboxing stay parallel). The codec's
# lines become the item's reason (a picture with missing parts fails) or a logged warning naming the file;
# anything else another thread wrote to fd 2 meanwhile is passed on to the real stderr unchanged.
CODEC_LINE = re.compile(
    r"^(Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters|Inconsistent progression|"
    r"Warning: unknown JFIF|Application transferred too|libpng (warning|error)|Bogus )"
)
INCOMPLETE_MARKS = ("Premature end of JPEG file", "premature end of data segment")
_fd2_lock = threading.Lock()
_capture = None  # a temporary file, opened once, fd 2 points at it during each decode


def decode_quietly(data: np.ndarray) -> tuple[np.ndarray | cv2.error | None, list[str]]:
    """``cv2.imdecode(data)`` (or the ``cv2.error`` it raised) and the codec's messages, kept off stderr."""
    global _capture
    with _fd2_lock:
        if _capture is None:
            _capture = tempfile.TemporaryFile()
        _capture.seek(0)
        _capture.truncate()
        saved = os.dup(2)
        try:
            os.dup2(_capture.fileno(), 2)
            try:
                image = cv2.imdecode(data, cv2.IMREAD_COLOR)
            except cv2.error as exc:
                image = exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        _capture.seek(0)
        text = _capture.read()
    if not text:
        return image, []
    messages, others = [], []
    for line in text.splitlines(keepends=True):
        said = line.decode("utf-8", "replace")
        if CODEC_LINE.match(said):
            messages.append(said.strip())
        else:
            others.append(line)
    if others:  # another thread's output, written while fd 2 pointed at the capture file
        os.write(2, b"".join(others))
    return image, messages


def prefetch(inputs: Iterable[T], fn: Callable[[T], R], workers: int, depth: int) -> Iterator[R]:
    """``map(fn, inputs)`` on ``workers`` threads, in input order, at most ``depth`` results in flight.

    Closing the iterator early cancels the work not yet started.
    """
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="avala-load")
    pending: collections.deque = collections.deque()
    try:
        for value in inputs:
            pending.append(pool.submit(fn, value))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


MAX_TEXT_BYTES = 64 << 20  # 64 MiB: one item's text; longer files should be split (per_line, JSONL)


def read_text(item: Item, timings: dict[str, float], max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The text of one item: given in memory, or a whole UTF-8 file; failures raise :class:`ItemError`."""
    if item.error:
        raise ItemError(item.error)
    if item.text is not None:
        timings["read"] = timings["decode"] = 0.0
        if not item.text.strip():
            raise ItemError(f"{item.source}: the text is empty (or only blank space); nothing to label")
        return item.text
    t0 = time.perf_counter()
    try:
        with open(item.source, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ItemError(f"cannot read {item.source}: {exc.strerror or exc}") from exc
    t1 = time.perf_counter()
    timings["read"] = (t1 - t0) * 1e3
    if len(data) > max_bytes:
        raise ItemError(f"{item.source} is over {max_bytes >> 20} MiB; split it (one item per line: --per-line)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ItemError(f"{item.source} is not UTF-8 text ({exc.reason} at byte {exc.start}); re-encode it") from exc
    timings["decode"] = (time.perf_counter() - t1) * 1e3
    if not text.strip():
        raise ItemError(f"{item.source} holds no text (empty, or only blank space); nothing to label")
    return text
