"""Image bytes -> BGR pixels, with the codec's warnings kept as the item's own reason.

Every file decodes with ``cv2.imdecode`` (``IMREAD_COLOR``: EXIF orientation applied), on the loader threads side
by side: cv2 releases the GIL while it decodes and gives BGR directly. (Until 2026-12 plain JPEGs went through
torchvision's ``decode_jpeg`` here and everything else through cv2 one at a time; torchvision gives RGB, and its
conversion to cv2's BGR cost a copy of every picture, while PNGs and the other formats decoded one at a time.
torchvision's CPU decode is still what :func:`decode_jpegs_on` falls back to off a GPU.)

Why the warnings need care: libjpeg (in cv2 and in torchvision alike) prints its warnings with fprintf to the
process's stderr (fd 2): "Corrupt JPEG data: 5 extraneous bytes before marker 0xd9", "Corrupt JPEG data: premature
end of data segment" (part of the picture is missing), "libpng warning: ...". No library tells its caller: the
picture comes back as if it were whole, so the message, read off fd 2, is what turns into the item's failure or a
logged warning naming the file. While any decode runs, fd 2 points at a capture file (:class:`QuietDecodes`):

* decodes run **shared** (many at once). After each, the capture is read; a codec line in it marks every decode
  that was running meanwhile as suspect (we cannot tell which thread printed it), and each suspect is decoded
  again **exclusive** (alone: no other decode running), so every codec line printed then is its own and the file
  gets exactly its own reason. False alarms cost a second decode of a few pictures, and only when a damaged file
  is met. A decode that fails (no picture) is redone exclusive too, for the messages that say why.

Anything else written to fd 2 meanwhile (another thread's log line, a progress bar) is passed on to the real
stderr unchanged, when the next decode ends (milliseconds late). During a run the loader threads decode almost
all the time, so fd 2 stays redirected most of it; a hard crash then leaves its last words in the capture.

torchvision 0.29 marks its image codecs deprecated (TorchCodec takes them over): if ``decode_jpeg`` goes away or
fails to import, :func:`decode_jpegs_on` sends every file to the CPU path.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import struct
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import cv2
import numpy as np

from avala_infer.engine.image_header import JPEG_EOI, JPEG_SOF, JPEG_SOS, jpeg_segments

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

# Huffman-coded frames libjpeg-turbo decodes the same way in both libraries: baseline, extended, progressive.
# The others (C3 lossless, C5-C7 differential, C9-CF arithmetic) are rare enough to take the cv2 path.
PLAIN_FRAMES = frozenset({0xC0, 0xC1, 0xC2})
OTHER_FRAMES = JPEG_SOF - PLAIN_FRAMES

DEPRECATION_MESSAGE = "The image decoding and encoding capabilities of TorchVision are deprecated"

# The codec lines libjpeg and libpng print (see the module docstring). Bare "Corrupt JPEG data: ..." covers
# libjpeg's JWRN_* messages about the data; the others are its remaining warnings and libpng's prefix.
CODEC_LINE = re.compile(
    r"^(Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters|Inconsistent progression|"
    r"Warning: unknown JFIF|Application transferred too|libpng (warning|error)|Bogus |Unknown Adobe color transform)"
)
# Messages that mean part of the picture is missing: the item fails rather than being labeled half grey.
INCOMPLETE_MARKS = ("Premature end of JPEG file", "premature end of data segment")


def is_plain_jpeg(data: np.ndarray | bytes | memoryview) -> bool:
    """Whether torchvision's ``decode_jpeg`` gives exactly cv2's picture for these bytes, from the header alone:
    the JPEGs the device path (``--decode gpu``, :func:`decode_jpegs_on`) takes; the rest decode on the CPU.

    True for an 8-bit Huffman-coded JPEG (baseline, extended or progressive) with 1 (gray) or 3 (YCbCr)
    components. False for everything else, and for a 3-component JPEG its Adobe marker says is stored as RGB
    (rare; not checked against cv2, so not trusted); unreadable headers are False too: cv2 says what is wrong.
    Whether the rest of the file is there is :func:`goes_to_the_device`'s question.
    """
    rgb_stored = False
    for marker, payload in jpeg_segments(data):
        if marker == 0xEE and payload[:5] == b"Adobe" and len(payload) > 11:  # APP14
            rgb_stored = payload[11] == 0  # the colour transform flag: 0 = RGB or CMYK as stored
        elif marker in PLAIN_FRAMES:  # precision, height, width, components
            if len(payload) < 6:
                return False
            precision, components = payload[0], payload[5]
            return precision == 8 and (components == 1 or (components == 3 and not rgb_stored))
        elif marker in OTHER_FRAMES or marker == JPEG_SOS or marker == JPEG_EOI:  # another coding, or no frame
            return False
    return False


def goes_to_the_device(data: np.ndarray | bytes | memoryview) -> bool:
    """Whether ``--decode gpu`` takes this file: a plain JPEG (:func:`is_plain_jpeg`) that ends with its end marker.

    nvJPEG was seen on an H200 decoding a file cut short without a word (its missing rows filled in) where cv2
    names it as damaged; a file that does not end with its end marker is cut short for sure, so it goes to cv2,
    which says so, whatever nvJPEG would do with it (that case was not seen on the GPU). Data appended after the
    marker (some cameras do) sends the file to cv2 as well, which reads it as before. A file cut short that still
    ends with an end marker is the damage this cannot see: see :func:`decode_jpegs_on`.
    """
    return bytes(data[-2:]) == b"\xff\xd9" and is_plain_jpeg(data)


# --------------------------------------------------------------------------------------------- fd 2 capture


class QuietDecodes:
    """Runs decodes with fd 2 pointed at a capture file, and sorts what lands there.

    Shared decodes run side by side; an exclusive one waits until none is running and keeps new ones out until
    it ends (waiting exclusive decodes go first, so a stream of JPEGs cannot starve a PNG). fd 2 is redirected
    while any decode runs and restored when the last one ends. The capture is read with ``pread``, which leaves
    the offset the writers (libjpeg, and any thread writing to stderr) share where it is, and emptied only while
    fd 2 does not point at it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0  # decodes in flight, either kind
        self._exclusive = False
        self._exclusive_waiting = 0
        self._alarms = 0  # codec lines seen while shared decodes ran: each makes the decodes of that time suspect
        self._capture = -1  # the capture file's descriptor, opened on first use
        self._real_stderr = -1  # a duplicate of the real fd 2 while it is redirected
        self._sorted = 0  # bytes of the capture already read

    def shared(self, decode: Callable[[], T]) -> tuple[T | BaseException, bool]:
        """``decode()`` (or the exception it raised) and whether it can be trusted: no codec line showed up
        while it ran."""
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and not self._exclusive_waiting)
            self._start()
            alarms = self._alarms
        result: T | BaseException
        try:
            result = decode()
        except Exception as exc:  # the caller falls back to cv2, which names the problem
            result = exc
        finally:
            with self._cond:
                if self._finish():
                    self._alarms += 1
                trusted = self._alarms == alarms
        return result, trusted

    def exclusive(self, decode: Callable[[], T]) -> tuple[T, list[str]]:
        """``decode()`` alone, and the codec lines it printed."""
        with self._cond:
            self._exclusive_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._exclusive and self._running == 0)
            finally:
                self._exclusive_waiting -= 1
            self._exclusive = True
            self._start()
        try:
            result = decode()
        finally:
            with self._cond:
                messages = self._finish()
                self._exclusive = False
                self._cond.notify_all()
        return result, messages

    def _start(self) -> None:  # under the condition's lock
        if self._running == 0:
            if self._capture < 0:
                with tempfile.TemporaryFile() as handle:  # removed at once; the duplicate keeps it open
                    self._capture = os.dup(handle.fileno())
            # Nothing writes to the capture now (fd 2 is the real one): empty it, writes start at 0 again.
            os.ftruncate(self._capture, 0)
            os.lseek(self._capture, 0, os.SEEK_SET)
            self._sorted = 0
            self._real_stderr = os.dup(2)
            os.dup2(self._capture, 2)
        self._running += 1

    def _finish(self) -> list[str]:  # under the condition's lock; the codec lines written since the last read
        self._running -= 1
        if self._running == 0:
            os.dup2(self._real_stderr, 2)
            os.close(self._real_stderr)
            self._real_stderr = -1
        messages = self._sort()
        self._cond.notify_all()
        return messages

    def _sort(self) -> list[str]:
        size = os.fstat(self._capture).st_size
        if size <= self._sorted:
            return []
        text = os.pread(self._capture, size - self._sorted, self._sorted)
        self._sorted += len(text)
        messages, others = [], []
        for line in text.splitlines(keepends=True):
            said = line.decode("utf-8", "replace")
            if CODEC_LINE.match(said):
                messages.append(said.strip())
            else:
                others.append(line)
        if others:  # another thread's output, written while fd 2 pointed at the capture file
            with contextlib.suppress(OSError):  # a closed stderr must not leave the decodes locked out
                os.write(self._real_stderr if self._real_stderr >= 0 else 2, b"".join(others))
        return messages


_quiet = QuietDecodes()


# --------------------------------------------------------------------------------------------- decoding


@functools.cache
def _torchvision_jpeg() -> Callable[..., Any] | None:
    """bytes -> torchvision's RGB CHW picture, EXIF orientation applied (torch imported on first use), or ``None``."""
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:  # a broken install: every file decodes on the CPU, with cv2
        return None
    # torchvision 0.29 warns on every call that its codecs are deprecated (see the module docstring): that one
    # message, once per picture, says nothing a user can act on, so it alone is silenced
    warnings.filterwarnings("ignore", message=DEPRECATION_MESSAGE, category=DeprecationWarning)

    def decode(data: np.ndarray) -> torch.Tensor:
        return decode_jpeg(torch.from_numpy(data), mode=ImageReadMode.RGB, apply_exif_orientation=True)

    return decode


def _decode_chw_shared(data: np.ndarray) -> torch.Tensor | None:
    """torchvision's RGB CHW picture, decoded shared; ``None`` when it failed or cannot be trusted."""
    decode = _torchvision_jpeg()
    if decode is None:
        return None
    if not data.flags.writeable:  # torch.from_numpy warns on read-only memory
        data = data.copy()
    result, trusted = _quiet.shared(lambda: decode(data))
    return None if not trusted or isinstance(result, BaseException) else result


def decode_with_cv2(data: np.ndarray) -> tuple[np.ndarray | cv2.error | None, list[str]]:
    """``cv2.imdecode(data)`` (or the ``cv2.error`` it raised) and the codec's messages, alone and off stderr."""

    def decode() -> np.ndarray | cv2.error | None:
        try:
            return cv2.imdecode(data, cv2.IMREAD_COLOR)
        except cv2.error as exc:
            return exc

    return _quiet.exclusive(decode)


def decode_quietly(data: np.ndarray) -> tuple[np.ndarray | cv2.error | None, list[str]]:
    """Any image's bytes -> its BGR uint8 HxWx3 picture as ``cv2.imdecode`` gives it (``None`` or the
    ``cv2.error`` when it cannot), and the codec's messages, none of which reach stderr.

    Decoded beside the other loader threads; decoded again alone when a codec line showed up meanwhile or when
    it gave no picture (the module docstring says why).
    """
    image, trusted = _quiet.shared(lambda: cv2.imdecode(data, cv2.IMREAD_COLOR))
    if trusted and isinstance(image, np.ndarray):
        return image, []
    return decode_with_cv2(data)


# --------------------------------------------------------------------------------------------- on a device


def decode_jpegs_on(device: torch.device | str, datas: Sequence[np.ndarray]) -> list[torch.Tensor | Exception]:
    """Decode JPEG files' bytes on ``device`` in one call: for each, an RGB CHW uint8 tensor on that device (EXIF
    orientation applied), or the exception that says why not (decode that item with :func:`decode_quietly`).

    On CUDA: torchvision's batched nvJPEG decode; when the batch call fails, each item alone, so one bad file
    fails only itself. nvJPEG reports no damage that libjpeg only warns about: a file whose data stops early
    but that ends with an end marker (a copy cut short, then closed) decodes with its missing part filled in,
    where the CPU path fails it as damaged (measured on an H200, ``tests/test_device_decode.py``). That is why
    ``--decode gpu`` stays opt-in (with its speed: see the README). Elsewhere: one by one on the CPU, shared as
    :func:`decode_jpeg_shared` (a decode during which a codec warning showed up is a failure here). Only
    :func:`goes_to_the_device` bytes are tried; the others fail at once with a ``ValueError``, as they belong to
    cv2.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    results: list[torch.Tensor | Exception] = []
    wanted = []
    for i, data in enumerate(datas):
        results.append(ValueError("not a plain, whole JPEG: cv2 decodes it"))
        if goes_to_the_device(data):
            wanted.append(i)
    if device.type != "cuda":
        for i in wanted:
            image = _decode_chw_shared(datas[i])
            results[i] = image if image is not None else ValueError("torchvision refused or warned: cv2 decodes it")
        return results
    # nvJPEG does not apply EXIF orientation (torchvision does it on the CPU only): it is applied here, as cv2 does.
    tensors = [torch.from_numpy(datas[i] if datas[i].flags.writeable else datas[i].copy()) for i in wanted]
    try:
        decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    except Exception:  # one bad file fails the whole batched call: find it
        decoded = []
        for tensor in tensors:
            try:
                decoded.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
            except Exception as exc:
                decoded.append(exc)
    for i, image in zip(wanted, decoded):
        results[i] = image if isinstance(image, Exception) else oriented(image, exif_orientation(datas[i]))
    return results


def exif_orientation(data: np.ndarray | bytes | memoryview) -> int:
    """The EXIF orientation (1-8) in a JPEG's APP1 segment; 1 (as stored) when there is none or it is unreadable."""
    for marker, payload in jpeg_segments(data):
        if marker == 0xE1 and payload[:6] == b"Exif\0\0":
            return _tiff_orientation(bytes(payload[6:]))
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        tag, kind = struct.unpack(order + "HH", tiff[entry : entry + 4])
        if tag == 0x0112 and kind == 3:  # Orientation, a SHORT held in the entry itself
            (value,) = struct.unpack(order + "H", tiff[entry + 8 : entry + 10])
            return value if 1 <= value <= 8 else 1
    return 1


def oriented(chw: torch.Tensor, orientation: int) -> torch.Tensor:
    """A CHW picture turned upright for its EXIF ``orientation`` (1-8), as cv2 and torchvision's CPU decode do."""
    if orientation in (5, 6, 7, 8):  # the stored picture lies on its side: swap height and width first
        chw = chw.transpose(1, 2)
    flips = {2: (2,), 3: (1, 2), 4: (1,), 6: (2,), 7: (1, 2), 8: (1,)}.get(orientation)
    return chw.flip(flips) if flips else chw
