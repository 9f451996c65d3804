"""Reading PNG and JPEG headers without decoding: the image size (to refuse huge images before they hit memory),
and the one walk over a JPEG's marker segments that decode.py reads too (frame type, EXIF orientation).

Our own few lines rather than ``PIL.Image.open``: importing ultralytics monkey-patches ``Image.open`` to
install packages when it meets a file it cannot identify.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_SOS, JPEG_EOI = 0xDA, 0xD9
# markers without a length field: TEM, RST0-7 and a stray SOI (EOI also has none: it ends the walk)
JPEG_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})
HEADER_SCAN_LIMIT = 1 << 20  # headers sit near the start: a frame header further in is not worth finding


def image_size(data: bytes | memoryview | np.ndarray) -> tuple[int, int] | None:
    """(width, height) of a PNG or JPEG from its header, or ``None`` when unknown or unreadable."""
    view = memoryview(data)
    if view[:8] == PNG_MAGIC and len(view) >= 24 and view[12:16] == b"IHDR":
        return struct.unpack(">II", view[16:24])
    return _jpeg_size(view)


def _jpeg_size(data: bytes | memoryview | np.ndarray) -> tuple[int, int] | None:
    for marker, payload in jpeg_segments(data):
        if marker in JPEG_SOF:  # precision, height, width
            if len(payload) < 5:
                return None
            height, width = struct.unpack(">HH", payload[1:5])
            return width, height
    return None


def jpeg_segments(data: bytes | memoryview | np.ndarray) -> Iterator[tuple[int, memoryview]]:
    """A JPEG's marker segments from the first after SOI, as ``(marker, payload)``: the payload is what follows
    the length field, a view of ``data`` (no copy), cut short where the data ends.

    The walk ends after yielding SOS (``0xDA``: entropy-coded data follows) or EOI (``0xD9``, with an empty
    payload); and, yielding nothing more, at a byte where a marker should be and is not (garbage), at a length
    field under 2, where the data ends before a length field, or after :data:`HEADER_SCAN_LIMIT` bytes. Fill
    bytes and markers without a length are stepped over. Nothing at all for data that does not start with SOI.
    """
    view = memoryview(data)[:HEADER_SCAN_LIMIT]
    if view[:2] != JPEG_SOI:
        return
    end, i = len(view), 2
    while i + 1 < end:
        if view[i] != 0xFF:
            return
        marker = view[i + 1]
        if marker == 0xFF:  # a fill byte before the marker
            i += 1
            continue
        if marker in JPEG_STANDALONE:
            i += 2
            continue
        if marker == JPEG_EOI:
            yield marker, view[i + 2 : i + 2]
            return
        if i + 4 > end:
            return
        length = view[i + 2] << 8 | view[i + 3]  # counts its own two bytes
        if length < 2:
            return
        yield marker, view[i + 4 : i + 2 + length]
        if marker == JPEG_SOS:
            return
        i += 2 + length
