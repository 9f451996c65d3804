"""YOLO detection pre- and post-processing shared by every backend that runs YOLO weights.

Pre-processing is :func:`avala_infer.predictors.imaging.letterbox`, which mirrors ultralytics' ``LetterBox``
(same rounding, same 114 grey, same INTER_LINEAR resize) so that our boxes equal the reference's.
Post-processing is ultralytics' class-aware NMS, image by image on the model's device (an image's boxes never
depend on its batch); the batch's rows then come to the host in one copy and go back to original pixels with
ultralytics' ``scale_boxes`` rule, in numpy. An end-to-end head (YOLO26's one-to-one head, or an export with NMS in
its graph) already gives each image's best rows, ``(B, k, 6 + extra)`` xyxy, score, class: it gets no NMS, only the
score floor and ``max_det``, as ultralytics' ``non_max_suppression(end2end=True)`` (see :func:`end_to_end_rows`).
Which head a model has is read from its weights by each backend (``YoloDetector.end_to_end``), never from the spec.
An input size that is not a multiple of the model's stride is rounded up, with a warning, as ultralytics'
``check_imgsz`` does (the network's feature maps would not line up otherwise).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from avala_infer.annotations import Detections
from avala_infer.predictors.base import Predictor
from avala_infer.predictors.imaging import letterbox
from avala_infer.types import ModelType

log = logging.getLogger(__name__)

MAX_NMS_CANDIDATES = 30000  # per image, as ultralytics
MAX_WH = 7680  # ultralytics' per-class box offset in class-aware NMS (its non_max_suppression max_wh)
# rows an end-to-end head gives per image: ultralytics predict sets its head's top-k to max(max_det, 300), 300 at its
# default max_det (an ONNX export bakes its own k, from the export's max_det)
END_TO_END_CANDIDATES = 300
# the model type of each ``task`` an ultralytics checkpoint or export names
TASKS = {"detect": "object_detection", "segment": "instance_segmentation"}


@dataclasses.dataclass(frozen=True)
class Letterboxed:
    """A letterboxed BGR uint8 image and the shape of the original it came from."""

    image: np.ndarray
    orig_shape: tuple[int, int]  # (height, width)


def stride_multiple(size: int, stride: int) -> int:
    """``size`` rounded up to a multiple of ``stride`` (ultralytics ``check_imgsz``: 650 -> 672 at stride 32)."""
    return max(math.ceil(size / stride) * stride, stride)


def content_box(in_shape: tuple[int, int], orig_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of an image's content in its letterboxed input, the padding around it cut: the
    rounding of ultralytics ``scale_boxes`` and ``scale_masks``."""
    gain = min(in_shape[0] / orig_shape[0], in_shape[1] / orig_shape[1])
    new_h, new_w = (max(round(x * gain), 1) for x in orig_shape)
    top = round((in_shape[0] - new_h) / 2 - 0.1)
    left = round((in_shape[1] - new_w) / 2 - 0.1)
    return top, left, new_h, new_w


def unletterbox_params(in_shape: tuple[int, int], orig_shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """(gain_x, gain_y, pad_x, pad_y) that map letterboxed coordinates back, as ultralytics ``scale_boxes``."""
    pad_y, pad_x, new_h, new_w = content_box(in_shape, orig_shape)
    return new_w / orig_shape[1], new_h / orig_shape[0], pad_x, pad_y


def class_floors(label_filter: Any, nc: int) -> np.ndarray | None:
    """Per model class, the lowest score the run's label filter keeps (``inf``: a class it drops), for the boxes
    to be cut before ``max_det`` counts them, as ultralytics' ``classes=`` is: an image's best ``max_det`` boxes
    are then its best among the labels asked for, not among all. None when the filter keeps every class at the
    score floor (nothing to cut early), or there is no filter.

    Cutting before NMS changes nothing else: NMS is per class, and a box below its class's threshold only ever
    suppresses lower-scoring boxes of its class, which the filter drops as well."""
    if label_filter is None or len(label_filter.class_to_output) != nc:
        return None
    out = np.asarray(label_filter.class_to_output)
    floors = np.where(out >= 0, np.asarray(label_filter.thresholds, np.float32)[np.maximum(out, 0)], np.inf)
    return None if (floors <= label_filter.score_floor).all() else floors.astype(np.float32)


def batched_nms(
    raw: Any, score_floor: float, iou: float, nc: int, max_det: int | None = None, floors: np.ndarray | None = None
) -> tuple[Any, list[int]]:
    """Class-aware NMS of a batch of raw YOLO outputs ``(B, 4 + nc + extra, anchors)``, image by image.

    Each image goes through its own ``torchvision.ops.nms`` with ultralytics' per-class offset (``class * MAX_WH``
    added to the box, as its ``non_max_suppression``), so an image's result is the reference's and cannot
    depend on the other images of its batch or on its position in it. (One ``batched_nms`` over the whole
    batch with ``image * nc + class`` groups shifted boxes by up to ~4e5 px in float32, and the rounding flipped
    IoU decisions near the threshold: an image's boxes changed with its batch neighbours.)

    Returns ``(rows, counts)``: rows ``(k, 6 + extra)`` of x1, y1, x2, y2, score, class (letterboxed pixels),
    then the extra channels (mask coefficients), image after image, each image's rows by descending score
    (at most ``max_det`` of them); and how many rows each image has (host ints, for ``rows.split(counts)``).
    ``raw`` is a torch tensor, or a numpy array (an ONNX detector's outputs on the CPU): then rows is one too,
    found with the same float32 arithmetic and :mod:`~avala_infer.predictors.host_nms`, and torch is not
    imported.
    """
    if isinstance(raw, np.ndarray):
        return _host_batched_nms(raw, score_floor, iou, nc, max_det, floors)
    import torch

    from avala_infer.predictors.nms_kernel import nms

    raw = raw.float()
    best, cls = raw[:, 4 : 4 + nc, :].max(1)  # (B, anchors)
    candidates = best > score_floor
    if floors is not None:  # the run's labels and per-label thresholds (class_floors), before max_det counts
        candidates &= best >= torch.as_tensor(floors, device=best.device)[cls]
    img_idx, anchor_idx = torch.nonzero(candidates, as_tuple=True)  # image by image, anchors in order
    counts = torch.bincount(img_idx, minlength=raw.shape[0]).tolist()
    scores = best[img_idx, anchor_idx]
    classes = cls[img_idx, anchor_idx].float()
    xywh = raw[img_idx, :4, anchor_idx]
    boxes = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
    offset_boxes = boxes + classes[:, None] * MAX_WH  # exactly ultralytics' float32 values, image by image
    keep, kept, start = [], [], 0
    for n in counts:
        if n:
            image_boxes, image_scores = offset_boxes[start : start + n], scores[start : start + n]
            order = None
            if n > MAX_NMS_CANDIDATES:  # rare: keep the image's best, as ultralytics
                order = image_scores.argsort(descending=True)[:MAX_NMS_CANDIDATES]
                image_boxes, image_scores = image_boxes[order], image_scores[order]
            mine = nms(image_boxes, image_scores, iou)[:max_det]
            keep.append((mine if order is None else order[mine]) + start)
            kept.append(len(mine))
        else:
            kept.append(0)
        start += n
    keep = torch.cat(keep) if keep else img_idx[:0]
    extra = raw[img_idx[keep], 4 + nc :, anchor_idx[keep]]
    rows = torch.cat((boxes[keep], scores[keep, None], classes[keep, None], extra), 1)
    return rows, kept


def _host_batched_nms(
    raw: np.ndarray, score_floor: float, iou: float, nc: int, max_det: int | None, floors: np.ndarray | None
) -> tuple[np.ndarray, list[int]]:
    """:func:`batched_nms` of a numpy batch, step for step in numpy (float32 throughout, as torch computes it)."""
    from avala_infer.predictors.host_nms import class_nms

    raw = raw.astype(np.float32, copy=False)
    class_scores = raw[:, 4 : 4 + nc, :]
    best = class_scores.max(1)  # (B, anchors)
    candidates = best > np.float32(score_floor)  # compared in float32, as torch compares with a Python float
    img_idx, anchor_idx = np.nonzero(candidates)  # image by image, anchors in order
    # the class of the candidates only: the first best on a tie, as torch's max
    cls = class_scores[img_idx, :, anchor_idx].argmax(1)
    if floors is not None:  # as batched_nms
        wanted = best[img_idx, anchor_idx] >= np.asarray(floors, np.float32)[cls]
        img_idx, anchor_idx, cls = img_idx[wanted], anchor_idx[wanted], cls[wanted]
    counts = np.bincount(img_idx, minlength=raw.shape[0]).tolist()
    scores = best[img_idx, anchor_idx]
    classes = cls.astype(np.float32)
    xywh = raw[img_idx, :4, anchor_idx]
    boxes = np.concatenate((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
    keep, kept, start = [], [], 0
    for n in counts:
        if n:
            image = slice(start, start + n)
            image_boxes, image_scores, image_classes = boxes[image], scores[image], classes[image]
            order = None
            if n > MAX_NMS_CANDIDATES:  # as batched_nms (ties among the best broken by position here)
                order = np.argsort(-image_scores, kind="stable")[:MAX_NMS_CANDIDATES]
                image_boxes, image_scores, image_classes = image_boxes[order], image_scores[order], image_classes[order]
            mine = class_nms(image_boxes, image_scores, image_classes, iou, MAX_WH)[:max_det]
            keep.append((mine if order is None else order[mine]) + start)
            kept.append(len(mine))
        else:
            kept.append(0)
        start += n
    keep = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    extra = raw[img_idx[keep], 4 + nc :, anchor_idx[keep]]
    rows = np.concatenate((boxes[keep], scores[keep, None], classes[keep, None], extra), 1)
    return rows, kept


def end_to_end_rows(
    raw: Any, score_floor: float, max_det: int | None = None, floors: np.ndarray | None = None
) -> tuple[Any, list[int]]:
    """The rows of a batch of end-to-end outputs ``(B, k, 6 + extra)`` (x1, y1, x2, y2, score, class, then mask
    coefficients; each image's rows by descending score) that score above ``score_floor``, at most ``max_det`` an
    image: ultralytics' ``non_max_suppression`` for an end-to-end model (no NMS: the head's one-to-one assignment
    already gives one row per object). Returns ``(rows, counts)`` as :func:`batched_nms`, numpy rows for a numpy
    ``raw``."""
    if isinstance(raw, np.ndarray):
        raw = raw.astype(np.float32, copy=False)
        keep = raw[..., 4] > np.float32(score_floor)
        if floors is not None:
            classes = np.clip(raw[..., 5].astype(np.int64), 0, len(floors) - 1)
            keep &= raw[..., 4] >= np.asarray(floors, np.float32)[classes]
        if max_det is not None:
            keep &= np.cumsum(keep, 1) <= max_det
        return raw[keep], keep.sum(1).tolist()
    import torch

    raw = raw.float()  # fp16 outputs: the float32 rows the NMS path returns too, as ultralytics
    keep = raw[..., 4] > score_floor
    if floors is not None:  # as batched_nms
        classes = raw[..., 5].long().clamp_(0, len(floors) - 1)
        keep &= raw[..., 4] >= torch.as_tensor(floors, device=raw.device)[classes]
    if max_det is not None:  # the first max_det rows kept, in the head's order
        keep &= torch.cumsum(keep, 1) <= max_det
    counts = keep.sum(1).tolist()  # the batch's one host read before the rows' copy
    return raw[keep], counts


def scale_boxes(
    boxes: np.ndarray, in_shape: tuple[int, int], orig_shapes: Sequence[tuple[int, int]], counts: Sequence[int]
) -> np.ndarray:
    """Letterboxed xyxy rows of a batch (image after image, ``counts[i]`` rows of image i) -> original pixels,
    each clipped to its image: a new float32 array, with ultralytics' ``scale_boxes`` float32 arithmetic."""
    per_image = np.array(
        [(*unletterbox_params(in_shape, shape), shape[1], shape[0]) for shape in orig_shapes], dtype=np.float32
    ).reshape(-1, 6)  # gain_x, gain_y, pad_x, pad_y, width, height
    per_row = np.repeat(per_image, counts, axis=0)
    gain, pad, limit = per_row[:, [0, 1, 0, 1]], per_row[:, [2, 3, 2, 3]], per_row[:, [4, 5, 4, 5]]
    return np.minimum(np.maximum((boxes - pad) / gain, 0), limit)


def mask_bounds(
    boxes: np.ndarray, in_shape: tuple[int, int], orig_shapes: Sequence[tuple[int, int]], counts: Sequence[int]
) -> np.ndarray:
    """int64 ``(k, 4)`` ``x1, y1, x2, y2`` in original pixels (half-open, clipped to the image) outside of which
    each row's instance mask (``yolo_seg.instance_masks``) is all False, from the letterboxed xyxy ``boxes``.

    The mask is cut to its box at the letterboxed size (columns ``c`` with ``x1 <= c < x2``: ``ceil(x1)`` to
    ``ceil(x2) - 1``), then its content is resized bilinearly to the original size, where an output column ``x``
    reads content columns ``floor(s)`` and ``floor(s) + 1`` at ``s = (x + 0.5) * gain - 0.5``: it can be set only
    for ``(first - 0.5) / gain - 0.5 <= x < (last + 1.5) / gain - 0.5``. The bounds widen that by more than a pixel
    each side (float rounding cannot reach them); rows alike."""
    per_image = np.array(
        [(*unletterbox_params(in_shape, shape), shape[1], shape[0]) for shape in orig_shapes], dtype=np.float64
    ).reshape(-1, 6)  # gain_x, gain_y, pad_x, pad_y, width, height
    per_row = np.repeat(per_image, counts, axis=0)
    gain, pad, limit = per_row[:, [0, 1]], per_row[:, [2, 3]], per_row[:, [4, 5, 4, 5]]
    first = np.ceil(boxes[:, :2].astype(np.float64)) - pad  # the first content column and row inside the box
    last = np.ceil(boxes[:, 2:].astype(np.float64)) - 1 - pad  # the last
    low, high = np.floor((first - 1) / gain) - 2, np.ceil((last + 2) / gain) + 2
    return np.clip(np.concatenate((low, high), 1), 0, limit).astype(np.int64)


class YoloDetector(Predictor):
    """Letterbox in, boxes out; backends subclass it with their own loading, ``collate`` and ``forward``.

    ``forward`` returns the raw output tensor, or for segmentation ``(raw, prototypes)``.
    """

    model_type = ModelType.OBJECT_DETECTION
    default_input_size = 640
    default_stride = 32
    # the weights' head gives final rows (no NMS, see :func:`end_to_end_rows`); backends set it from the weights
    end_to_end = False

    def __init__(self, spec, weights, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        self._requested_size = self.spec.input_size
        self._stride = 0
        self.stride = self.default_stride  # backends set the model's own once it is loaded

    def request_input_size(self, size: int) -> None:
        """Run at ``size`` instead of the spec's: rounded up to a multiple of the stride as the spec's would be."""
        self._requested_size = size
        self.spec = self.spec.with_overrides(input_size=size)
        if self._stride:
            self.stride = self._stride

    @property
    def stride(self) -> int:
        """The model's largest stride; setting it rounds the input size up to a multiple of it, with a warning."""
        return self._stride

    @stride.setter
    def stride(self, value: int) -> None:
        self._stride = int(value)
        size = stride_multiple(self._requested_size, self._stride)
        if size != self.spec.input_size:
            log.warning(
                "input size %d is not a multiple of %s's stride %d: using %d (pass a multiple of %d to choose)",
                self._requested_size, self.spec.name, self._stride, size, self._stride,
            )  # fmt: skip
            self.spec = self.spec.with_overrides(input_size=size)

    @property
    def minimal_padding(self) -> bool:
        return self.spec.letterbox == "rect"

    def prepare(self, image: np.ndarray) -> Letterboxed:
        boxed = letterbox(image, self.spec.input_size, self.stride, self.minimal_padding)
        return Letterboxed(boxed, image.shape[:2])

    def batch_key(self, prepared: Letterboxed) -> Hashable:
        return prepared.image.shape

    def masks_on_host(
        self,
        protos: Any,
        rows: Any,
        counts: Sequence[int],
        in_shape: tuple[int, int],
        orig_shapes: Sequence[tuple[int, int]],
        bounds: np.ndarray | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """Each image's instance masks and which of them are non-empty, on the host (segmentation subclasses;
        ``bounds``: each row's :func:`mask_bounds`); detectors have none."""
        return None

    def top_rows(self, preds: Any, max_det: int) -> Any:
        """An end-to-end head's final rows ``(B, k, 6 + extra)`` for a run's ``max_det``: as the forward gave them
        (an ONNX graph bakes its own k); a backend whose forward leaves the top-k to the run overrides this."""
        return preds

    def postprocess(
        self,
        raw: Any,
        prepared: Sequence[Letterboxed],
        *,
        score_floor: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        label_filter: Any = None,
        **_: Any,
    ) -> list[Detections]:
        """The batch's detections, read from the device once: its NMS rows in one copy (then split per image with
        numpy), and for segmentation its masks in as few copies as ``masks_on_host`` makes (on a GPU, of the
        pixels inside the bounds the rows give each mask). A host read per image would wait on the device once
        per image."""
        preds, protos = raw if isinstance(raw, tuple) else (raw, None)
        floors = class_floors(label_filter, len(self.labels))
        if self.end_to_end:
            rows, counts = end_to_end_rows(self.top_rows(preds, max_det), score_floor, max_det, floors)
        else:
            rows, counts = batched_nms(preds, score_floor, iou, len(self.labels), max_det, floors)
        in_shape = prepared[0].image.shape[:2]
        orig_shapes = [item.orig_shape for item in prepared]
        # the batch's one device-to-host copy of boxes, scores and classes (rows found in numpy are there already)
        host = rows[:, :6] if isinstance(rows, np.ndarray) else rows[:, :6].cpu().numpy()
        boxes = scale_boxes(host[:, :4], in_shape, orig_shapes, counts)
        bounds = None if protos is None else mask_bounds(host[:, :4], in_shape, orig_shapes, counts)
        masks = None if protos is None else self.masks_on_host(protos, rows, counts, in_shape, orig_shapes, bounds)
        class_id = host[:, 5].astype(np.int64)
        class_name = np.asarray(self.labels, dtype=object)[class_id]
        results, start = [], 0
        for i, n in enumerate(counts):
            mine = slice(start, start + n)
            start += n
            image_masks, nonempty = masks[i] if masks is not None else (None, None)
            image_bounds = None if bounds is None else bounds[mine]
            detections = Detections(
                boxes[mine], host[mine, 4], class_id[mine], class_name[mine], image_masks, image_bounds
            )
            if nonempty is not None and not nonempty.all():  # ultralytics drops an instance whose mask is empty
                detections = detections[nonempty]
            results.append(detections)
        return results
