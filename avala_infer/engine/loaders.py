"""Loaders: the only code that reads input bytes. They run ahead of the model in a bounded thread pool."""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import cv2
import numpy as np

from avala_infer.engine.decode import INCOMPLETE_MARKS, decode_quietly, exif_orientation, goes_to_the_device
from avala_infer.engine.image_header import image_size
from avala_infer.engine.sources import Item
from avala_infer.errors import ItemError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

MAX_PIXELS = 1 << 28  # 268 megapixels: about 800 MB decoded; larger images fail their item


def _check_pixel_count(data: np.ndarray, source: str, max_pixels: int) -> tuple[int, int] | None:
    """Refuse images over ``max_pixels`` from their header alone, before decoding; the (width, height) the header
    gives (``None``: it gives none)."""
    size = image_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ItemError(
            f"{source} is {size[0]}x{size[1]} pixels, over the {max_pixels:,}-pixel limit; downscale it first"
        )
    return size


def read_file(path: str) -> np.ndarray:
    """A file's bytes in a new writeable array (torch.from_numpy takes it as it is), in one ``read`` call for a
    regular file: 26 µs of CPU for a 160 kB JPEG here, where ``np.fromfile`` took 68 µs."""
    with open(path, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:  # empty, or a special file whose size is unknown: read to the end
            return np.frombuffer(handle.read(), dtype=np.uint8).copy()
        data = np.empty(size, dtype=np.uint8)
        got, view = 0, memoryview(data)
        while got < size and (count := handle.readinto(view[got:])):
            got += count
        return data if got == size else data[:got]  # shrank meanwhile: what was there


@dataclasses.dataclass(frozen=True)
class EncodedJpeg:
    """A plain JPEG's bytes, not decoded yet (``--decode gpu``: the model's device decodes it), with what its header
    says: the picture's size upright (EXIF orientation applied, as the decoders do) and that orientation."""

    data: np.ndarray
    source: str
    width: int
    height: int
    orientation: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """The decoded picture's shape, as ``read_image``'s array would have it."""
        return self.height, self.width, 3


def read_image(
    item: Item, timings: dict[str, float], max_pixels: int = MAX_PIXELS, *, keep_jpeg: bool = False
) -> np.ndarray | EncodedJpeg:
    """Read and decode one item to a BGR uint8 HxWx3 array (EXIF orientation applied, as cv2/ultralytics).

    Grayscale, RGBA and 16-bit images are converted; failures raise :class:`ItemError` with the reason. Images
    decode side by side on the loader threads (engine/decode.py). With ``keep_jpeg``, a plain JPEG whose header
    gives its size is not decoded: it comes back as an :class:`EncodedJpeg` (engine/device_decode.py decodes it on
    the model's device).
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
        data = read_file(item.source)
    except OSError as exc:
        raise ItemError(f"cannot read {item.source}: {exc.strerror or exc}") from exc
    t1 = time.perf_counter()
    timings["read"] = (t1 - t0) * 1e3
    if data.size == 0:
        raise ItemError(f"{item.source} is empty (0 bytes)")
    size = _check_pixel_count(data, item.source, max_pixels)
    if keep_jpeg and size is not None and goes_to_the_device(data):
        orientation = exif_orientation(data)
        width, height = size[::-1] if orientation >= 5 else size  # 5-8: the picture lies on its side
        timings["decode"] = 0.0  # on the device, in the batch's collate
        return EncodedJpeg(data, item.source, width, height, orientation)
    image = decode_image(data, item.source)
    timings["decode"] = (time.perf_counter() - t1) * 1e3
    return image


def decode_image(data: np.ndarray, source: str) -> np.ndarray:
    """An image file's bytes -> its BGR uint8 HxWx3 picture, as :func:`read_image` decodes it (codec warnings
    logged naming ``source``); :class:`ItemError` naming ``source`` when it cannot be decoded or is damaged."""
    image, messages = decode_quietly(data)
    if isinstance(image, cv2.error):
        raise ItemError(f"cannot decode {source}: {image}") from image
    if image is None:
        said = f" ({'; '.join(messages)})" if messages else ""
        raise ItemError(f"cannot decode {source}: not an image, or corrupt or truncated{said}")
    incomplete = [m for m in messages if any(mark in m for mark in INCOMPLETE_MARKS)]
    if incomplete:
        raise ItemError(
            f"{source} is a damaged image ({'; '.join(messages)}): part of the picture is missing, so it is not "
            "labeled; re-export or re-download it"
        )
    if messages:
        log.warning("%s: %s (decoded anyway; check the file)", source, "; ".join(messages))
    return image


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
