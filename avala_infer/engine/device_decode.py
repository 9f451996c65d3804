"""``decode="gpu"`` (``--decode gpu``): a batch's JPEGs decoded on the model's device, in its collate stage.

The loader threads then read a plain JPEG's bytes and header only (size, EXIF orientation:
:class:`~avala_infer.engine.loaders.EncodedJpeg`) and hand on a ``Letterboxed`` whose image is a
:class:`PendingImage`: the shape the letterboxed array will have (the batcher groups by it, postprocess reads it)
and the bytes. The collate stage decodes the batch's pending JPEGs in one
:func:`~avala_infer.engine.decode.decode_jpegs_on` call (nvJPEG on CUDA), letterboxes each with
:func:`~avala_infer.predictors.device_letterbox.letterbox_tensor` (ultralytics' geometry; the bilinear resize
within one grey level of cv2's) and stacks them, with the batch's CPU-decoded items, into the model's input on
the device. Everything else decodes on the loader threads as before: other formats, unusual JPEGs (CMYK, 12-bit,
lossless...), and every item of a stream whose ``on_image`` sink wants the pixels.

Failures stay per item: a JPEG the device will not decode is decoded on the CPU exactly as the loaders do
(:func:`~avala_infer.engine.loaders.decode_image`), and one that fails there too fails alone, with the reason
the CPU path gives, naming the file. A ``PendingImage`` also works where a plain array is expected
(``np.asarray`` decodes it on the CPU, or copies the device's picture back): the retry paths (out of memory,
a batch split in pieces) run the predictor's own collate on it.

Chosen per engine by :func:`device_decode_for`: ``cpu`` (the default until measured on a GPU), ``gpu`` (a
:class:`~avala_infer.errors.ConfigError` where it cannot run), ``auto`` (``gpu`` on CUDA for a YOLO model on the
torch backend, else ``cpu``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from avala_infer.engine.decode import decode_jpegs_on
from avala_infer.engine.loaders import EncodedJpeg, decode_image
from avala_infer.errors import ConfigError, ItemError
from avala_infer.predictors.imaging import letterbox, letterbox_geometry

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DECODE_MODES = ("cpu", "gpu", "auto")


def takes_device_decode(predictor_class: type) -> bool:
    """Whether the predictor can take a batch collated here: a YOLO detector or segmenter on the torch backend
    (letterboxed inputs, a torch forward; its ``collate`` is ``stack_to_device``, which :func:`collate_on_device`
    matches step for step)."""
    from avala_infer.predictors.detection.ultralytics import UltralyticsDetector

    return issubclass(predictor_class, UltralyticsDetector)


def device_decode_for(mode: str, devices: Sequence[str], predictor_class: type, model: str) -> bool:
    """Whether an engine on ``devices`` running ``model`` (a ``predictor_class``) decodes its JPEGs on the device,
    for ``mode``; decided before the model loads."""
    mode = str(mode).lower()
    if mode not in DECODE_MODES:
        raise ConfigError(f"decode must be one of {', '.join(DECODE_MODES)}, got {mode!r}")
    if mode == "cpu":
        return False
    on_cuda = all(device.startswith("cuda") for device in devices)
    supported = takes_device_decode(predictor_class)
    if mode == "auto":
        return on_cuda and supported
    if not on_cuda:
        raise ConfigError(
            f"decode 'gpu' decodes JPEGs with nvJPEG on a CUDA device, but this engine runs on {','.join(devices)}: "
            "use --decode cpu (or auto), or --device cuda"
        )
    if not supported:
        raise ConfigError(
            f"decode 'gpu' works for YOLO detection and segmentation models on the torch backend (.pt weights); "
            f"{model} ({predictor_class.__name__}) decodes on the CPU: use --decode cpu (or auto)"
        )
    return True


class PendingImage:
    """Stands in for ``Letterboxed.image`` (a letterboxed BGR uint8 HxWx3 array) while the picture is still JPEG
    bytes. ``shape`` is that array's; ``np.asarray(pending)`` gives the array itself: the device's letterboxed
    picture copied back once :func:`collate_on_device` has kept it, else decoded and letterboxed on the CPU as the
    loaders would (an :class:`ItemError` naming the file when it cannot be decoded)."""

    __slots__ = ("jpeg", "shape", "size", "stride", "minimal", "on_device")

    def __init__(self, jpeg: EncodedJpeg, size: int, stride: int, minimal: bool) -> None:
        self.jpeg = jpeg
        self.size, self.stride, self.minimal = size, stride, minimal
        box = letterbox_geometry(jpeg.width, jpeg.height, size, stride, minimal)
        self.shape = (box.new_height + box.top + box.bottom, box.new_width + box.left + box.right, 3)
        self.on_device: torch.Tensor | None = None  # (3, H, W) RGB, letterboxed: kept only for a retry

    def decode_on_cpu(self) -> np.ndarray:
        """The picture as the loaders decode it (BGR HxWx3), checked against the header's size."""
        image = decode_image(self.jpeg.data, self.jpeg.source)
        if image.shape != self.jpeg.shape:
            raise ItemError(
                f"{self.jpeg.source} decodes to {image.shape[1]}x{image.shape[0]} pixels, but its header says "
                f"{self.jpeg.width}x{self.jpeg.height}; re-export it"
            )
        return image

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if self.on_device is not None:
            array = np.ascontiguousarray(self.on_device.flip(0).permute(1, 2, 0).cpu().numpy())
        else:
            array = letterbox(self.decode_on_cpu(), self.size, self.stride, self.minimal)
        return array if dtype is None else array.astype(dtype)


def pending(jpeg: EncodedJpeg, predictor: Any) -> Any:
    """``predictor.prepare``'s result for a JPEG not decoded yet: a ``Letterboxed`` holding a :class:`PendingImage`."""
    from avala_infer.predictors.detection.yolo import Letterboxed

    image = PendingImage(jpeg, predictor.spec.input_size, predictor.stride, predictor.minimal_padding)
    return Letterboxed(image, jpeg.shape[:2])  # type: ignore[arg-type]  (an array stand-in: see PendingImage)


def has_pending(prepared: Sequence[Any]) -> bool:
    return any(isinstance(getattr(one, "image", None), PendingImage) for one in prepared)


def decode_pending(prepared: Sequence[Any], device: str) -> list[torch.Tensor | ItemError]:
    """Each item's letterboxed (3, H, W) RGB uint8 picture on ``device``: pending JPEGs decoded there in one call
    (one the device refuses, or that comes out another size than its header said, decoded on the CPU as the
    loaders do), the others' arrays copied there; or, for an item the CPU cannot decode either, its
    :class:`ItemError`. The device's pictures are kept on their ``PendingImage`` (see its ``on_device``) for
    the caller to drop once the batch is stacked."""
    import torch

    from avala_infer.predictors.device_letterbox import letterbox_tensor

    waiting = [i for i, one in enumerate(prepared) if isinstance(one.image, PendingImage)]
    decoded = decode_jpegs_on(device, [prepared[i].image.jpeg.data for i in waiting])
    pictures: list[Any] = [None] * len(prepared)
    for i, result in zip(waiting, decoded):
        image: PendingImage = prepared[i].image
        if isinstance(result, torch.Tensor) and tuple(result.shape[1:]) == image.jpeg.shape[:2]:
            image.on_device = pictures[i] = letterbox_tensor(result, image.size, image.stride, image.minimal)
            continue
        log.debug("%s: not decoded on %s (%s); decoding it on the CPU", image.jpeg.source, device, result)
        try:
            pictures[i] = _to_device(np.asarray(image), device)
        except ItemError as exc:
            pictures[i] = exc
    for i, one in enumerate(prepared):
        if pictures[i] is None:  # decoded on a loader thread (a PNG, a CMYK JPEG...)
            pictures[i] = _to_device(one.image, device)
    return pictures


def collate_on_device(pictures: Sequence[torch.Tensor], fp16: bool) -> torch.Tensor:
    """The model input from letterboxed (3, H, W) RGB uint8 pictures on one device: what ``stack_to_device``
    makes of the same pixels (the same steps: to half or float, divided by 255, channels-last)."""
    import torch

    batch = torch.stack(list(pictures))
    batch = batch.half() if fp16 else batch.float()
    return batch.div_(255).contiguous(memory_format=torch.channels_last)


def drop_device_pictures(prepared: Sequence[Any]) -> None:
    """Drop the device pictures :func:`decode_pending` kept (the stacked batch holds the pixels now)."""
    for one in prepared:
        if isinstance(getattr(one, "image", None), PendingImage):
            one.image.on_device = None


def _to_device(bgr: np.ndarray, device: str) -> torch.Tensor:
    """A BGR HxWx3 array as a (3, H, W) RGB tensor on ``device``."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(bgr)).to(device, non_blocking=False).permute(2, 0, 1).flip(0)
