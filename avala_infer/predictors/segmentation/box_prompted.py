"""Box-prompted instance segmentation: a detector's boxes prompt a SAM model, whose masks the boxes keep.

A chain spec names the segmenter's weights and the detector::

    name: yolo11n-sam
    model_type: instance_segmentation
    backend: transformers
    weights: sam-vit-base            # a save_pretrained folder: SamModel + SamProcessor, or Sam2Model + Sam2Processor
    params:
      detector: yolo11n              # any object_detection model: a model name or a spec .yaml path
      multimask_output: false        # true: SAM's three masks per box, the one it scores best kept
      mask_threshold: 0.0            # mask logits above it are the instance (SamProcessor.post_process_masks)

The chain's labels are the detector's (a ``labels:`` list on the chain spec replaces the detector's as it would
on the detector's own spec); each instance keeps the detector's box, class and score, and SAM's predicted IoU
of its mask is its mask score. ``input_size``, ``letterbox`` and ``precision`` of the chain apply to the
detector too (the segmenter's input size is its processor's).

The run's filters (confidence, labels, per-label thresholds, label mapping) choose the boxes that prompt SAM:
the engine passes its compiled filter to ``postprocess`` (``label_filter``), which keeps the boxes the filter
will keep and segments only those. The result stays in the detector's class ids: the engine's filter then maps
it as for any detector (applying the mapping here as well would map twice).

Batched: ``forward`` runs the detector on the whole batch; ``postprocess`` runs the detector's NMS and the run's
filter, then SAM's image encoder over the batch's images that kept a box (an image with none is never encoded: with
a narrow vocabulary, most are not), then SAM's prompt encoder and mask decoder once over every box of every image of
the batch (each box beside its image's embedding, a chunk of boxes at a time), then each image's masks go up to its
original size exactly as the family's processor's ``post_process_masks`` does (SAM: bilinear to the padded input,
the padding cut, bilinear to the original; SAM2: bilinear to the original; above ``mask_threshold``). On a CPU,
SAM's processor runs there too, on those images only (on a GPU it runs on the loader threads, off the thread that
feeds the device). SAM's models run in ``postprocess``, not ``forward``: which images and boxes they see depends on
the run's filter, which only ``postprocess`` receives (on a GPU the postprocess stage has a thread and a CUDA stream
of its own, so SAM on one batch overlaps the detector on the next). An instance whose mask comes out empty is
dropped, as YOLO-seg drops one (no writer can outline an empty mask).

Families, picked by ``model_type`` in the folder's config.json: ``sam`` (``SamModel`` with ``SamProcessor``: the
longest side resized to 1024, padded square) and ``sam2`` (``Sam2Model`` with ``Sam2Processor``: resized square,
unpadded; its image embeddings are a list of feature levels, the decoder reading the finest two as well). For
SAM2, ``multimask_output: false`` lets the decoder pick its mask by stability, as ``Sam2Model`` does.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avala_infer.annotations import Detections
from avala_infer.errors import ConfigError, ModelLoadError, ModelSpecError
from avala_infer.predictors.base import Predictor
from avala_infer.predictors.torch_runtime import queued_to_device
from avala_infer.predictors.transformers_loading import load_folder
from avala_infer.specs import ModelSpec, find_spec
from avala_infer.types import ModelType

log = logging.getLogger(__name__)

PARAMS = frozenset({"detector", "multimask_output", "mask_threshold"})
# config.json model_type -> the processor and model classes (transformers names) of each family this module runs
SAM_FAMILIES = {"sam": ("SamProcessor", "SamModel"), "sam2": ("Sam2Processor", "Sam2Model")}
# boxes the mask decoder takes at once: each carries a copy of its image's embedding (256 x 64 x 64 floats, 4 MB,
# for SAM ViT-B) and the decoder's activations
DECODE_CHUNK = 64
# images per pass of SAM's image encoder on a CPU: batching a 1024-pixel encoder gains a CPU nothing (it is bound by
# its matrix products) but multiplies its activations (hundreds of MB an image), and every new page of them faults
# in. Measured, `avala-infer label` with the chain over 128 images, malloc as glibc sets it: peak memory 3.2 GB
# against 5.5-5.9 GB with batches of 8, 30.7-31.9 s against 36.1-37.6 s
CPU_ENCODER_BATCH = 1
# bytes: the float intermediates of one chunk of masks going up to the original size (the padded input size and
# the original size, 4 bytes a pixel each), on top of the bool masks returned
MASK_MEMORY_BUDGET = 256 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class SamInput:
    """SAM's processor's output for one image: ``pixel_values`` (3, S, S) and the (height, width) of the input its
    boxes are scaled to (SAM: the size it was resized to before padding; SAM2: the processor's square
    ``target_size``)."""

    pixel_values: Any
    resized_shape: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Prompted:
    """One image prepared for both models: the detector's input, the original (height, width), and SAM's input:
    made at once (``sam``), or later from the BGR picture kept here (``image``) for the images that keep a box
    (see :meth:`BoxPromptedSegmenter.prepare`)."""

    detector_input: Any
    orig_shape: tuple[int, int]
    sam: SamInput | None = None
    image: np.ndarray | None = None


def load_sam_folder(folder: Path) -> tuple[str, Any, Any]:
    """(family, processor, model in eval mode on the CPU, fp32) from a ``save_pretrained`` folder: the family is
    config.json's ``model_type``, one of :data:`SAM_FAMILIES`."""
    import transformers
    from transformers import AutoConfig

    if not folder.is_dir():
        raise ModelLoadError(
            f"{folder} is not a folder: a box-prompted segmenter's weights are a folder saved with save_pretrained "
            "(config.json, the weights and the processor's config)"
        )
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # OSError, ValueError, KeyError...: transformers raises many types
        raise ModelLoadError(f"cannot read a model config from {folder}: {exc}") from exc
    if config.model_type not in SAM_FAMILIES:
        raise ModelLoadError(
            f"{folder} holds a {config.model_type!r} model; box-prompted segmentation runs {', '.join(SAM_FAMILIES)} "
            "models (SamModel with SamProcessor, Sam2Model with Sam2Processor)"
        )
    processor_name, model_name = SAM_FAMILIES[config.model_type]
    processor_class, model_class = getattr(transformers, processor_name), getattr(transformers, model_name)
    what = "a SAM model" if config.model_type == "sam" else "a SAM2 model"
    return (config.model_type, *load_folder(folder, processor_class, model_class, what))


def sam_box_prompts(boxes: np.ndarray, orig_shape: tuple[int, int], resized_shape: tuple[int, int]) -> np.ndarray:
    """xyxy boxes in original pixels -> float64 boxes in SAM's resized input, with the processor's arithmetic
    (``SamProcessor._normalize_coordinates``: float64, x by the width's scale, y by the height's); the prompt
    encoder reads them as given, so the same float64 values give the same embeddings."""
    (old_h, old_w), (new_h, new_w) = orig_shape, resized_shape
    coords = boxes.astype(np.float64).reshape(-1, 2, 2)
    coords[..., 0] = coords[..., 0] * (new_w / old_w)
    coords[..., 1] = coords[..., 1] * (new_h / old_h)
    return coords.reshape(-1, 4)


def sam2_box_prompts(boxes: np.ndarray, orig_shape: tuple[int, int], target_size: int) -> np.ndarray:
    """xyxy boxes in original pixels -> float32 boxes in SAM2's square input, with ``Sam2Processor``'s arithmetic
    (``_normalize_coordinates``: a float32 tensor, x by ``target_size / width``, y by ``target_size / height``):
    the same torch operations, so the same float32 values reach the prompt encoder."""
    import torch

    old_h, old_w = orig_shape
    coords = torch.tensor(boxes.tolist(), dtype=torch.float32).reshape(-1, 2, 2)
    coords[..., 0] = coords[..., 0] * (target_size / old_w)
    coords[..., 1] = coords[..., 1] * (target_size / old_h)
    return coords.reshape(-1, 4).numpy()


def decode_boxes(
    model: Any, embeddings: Any, image_index: np.ndarray, prompts: np.ndarray, multimask: bool
) -> tuple[Any, Any]:
    """SAM's prompt encoder and mask decoder over every box of a batch: (low-resolution mask logits (k, 1, h, w),
    mask scores (k,)), box by box in the order given. ``embeddings`` are the batch's image embeddings (SAM2: a list
    of feature levels, each gathered the same way), box ``i`` belongs to image ``image_index[i]`` and is prompted by
    ``prompts[i]`` (SAM input pixels: float64 for SAM, float32 for SAM2, as each processor makes them).

    Each box goes to the decoder as an image of its own (its image's embedding beside it): the decoder treats the
    boxes of one image as independent anyway, and so no padding box is decoded. With ``multimask`` the decoder
    makes three masks per box and the one with the highest predicted IoU is kept."""
    import torch

    levels = isinstance(embeddings, (list, tuple))
    device = embeddings[-1].device if levels else embeddings.device
    masks, scores = [], []
    for start in range(0, len(prompts), DECODE_CHUNK):
        chunk = slice(start, start + DECODE_CHUNK)
        index = torch.as_tensor(image_index[chunk], device=device)
        boxes = torch.as_tensor(prompts[chunk], device=device)[:, None, :]  # (k, 1, 4): one box per "image"
        mine = [level[index] for level in embeddings] if levels else embeddings[index]
        out = model(image_embeddings=mine, input_boxes=boxes, multimask_output=multimask)
        low, iou = out.pred_masks[:, 0], out.iou_scores[:, 0]  # (k, m, h, w), (k, m)
        best = iou.argmax(1)
        picked = torch.arange(len(best), device=device)
        masks.append(low[picked, best][:, None])
        scores.append(iou[picked, best])
    return torch.cat(masks), torch.cat(scores)


def masks_at_original(
    low_res: Any,
    padded_size: tuple[int, int] | None,
    resized_shape: tuple[int, int],
    orig_shape: tuple[int, int],
    threshold: float,
) -> Any:
    """One image's low-resolution mask logits (n, 1, h, w) -> bool masks (n, H, W) at the original size, as
    ``SamProcessor.post_process_masks``: bilinear up to the padded input, the padding cut away, bilinear to the
    original size, above ``threshold``; with no ``padded_size`` (SAM2, whose input is not padded), as
    ``Sam2Processor.post_process_masks``: bilinear straight to the original size, above ``threshold``. A chunk of
    masks at a time, within ``MASK_MEMORY_BUDGET`` bytes of floats (each mask is upsampled on its own either way:
    the same values bit for bit)."""
    import torch
    import torch.nn.functional as F

    n = len(low_res)
    height, width = orig_shape
    out = torch.empty((n, height, width), dtype=torch.bool, device=low_res.device)
    per_mask = 4 * ((padded_size[0] * padded_size[1] if padded_size else 0) + height * width)
    step = max(1, MASK_MEMORY_BUDGET // per_mask)
    for start in range(0, n, step):
        chunk = low_res[start : start + step].float()
        if padded_size is not None:
            padded = F.interpolate(chunk, padded_size, mode="bilinear", align_corners=False)
            chunk = padded[..., : resized_shape[0], : resized_shape[1]]
        full = F.interpolate(chunk, orig_shape, mode="bilinear", align_corners=False)
        torch.gt(full[:, 0], threshold, out=out[start : start + step])
    return out


def tight_bounds(masks: Any) -> Any:
    """int64 (n, 4) ``x1, y1, x2, y2`` (half-open) of each bool mask's set pixels, on the masks' device; an empty
    mask gets (0, 0, 0, 0). Two reductions of the masks: far less than the upsampling that made them."""
    import torch

    n, height, width = masks.shape
    bounds = torch.zeros((n, 4), dtype=torch.int64, device=masks.device)
    if n == 0:
        return bounds
    cols, rows = masks.any(1), masks.any(2)  # (n, W), (n, H)
    nonempty = cols.any(1)
    xs = torch.arange(width, device=masks.device)
    ys = torch.arange(height, device=masks.device)
    x1 = torch.where(cols, xs, width).amin(1)
    x2 = torch.where(cols, xs, -1).amax(1) + 1
    y1 = torch.where(rows, ys, height).amin(1)
    y2 = torch.where(rows, ys, -1).amax(1) + 1
    bounds[nonempty] = torch.stack((x1, y1, x2, y2), 1)[nonempty]
    return bounds


def kept_by_filter(detections: Detections, label_filter: Any) -> np.ndarray:
    """Which boxes the run's compiled filter (:class:`avala_infer.filters.LabelFilter`) keeps: its class is kept
    after mapping and its score reaches that class's threshold (``LabelFilter.apply``'s rule, without the
    renaming, which the engine does once on the chain's output). ``None``: every box."""
    if label_filter is None or not len(detections):
        return np.ones(len(detections), dtype=bool)
    out_ids = label_filter.class_to_output[detections.class_id]
    keep = out_ids >= 0
    keep &= detections.confidence >= label_filter.thresholds[np.where(keep, out_ids, 0)]
    return keep


def with_mask_scores(detections: Detections, scores: np.ndarray) -> Detections:
    """``detections`` carrying SAM's mask scores (its predicted IoU per mask) in ``Detections.mask_score``."""
    return dataclasses.replace(detections, mask_score=scores)


def without_instances(detections: Detections, orig_shape: tuple[int, int]) -> Detections:
    """An image without boxes, as YOLO-seg gives one: an empty (0, H, W) mask array and (0, 4) bounds."""
    empty = np.zeros((0, *orig_shape), dtype=bool)
    return dataclasses.replace(detections, mask=empty, mask_bounds=np.zeros((0, 4), dtype=np.int64))


class BoxPromptedSegmenter(Predictor):
    """A detector, then SAM on its boxes. Loading the detector by its spec's (model type, backend) is a registry
    look-up, which lies above the predictors: the registered subclass (:mod:`avala_infer.engine.chains`) does it
    in :meth:`load_detector`."""

    model_type = ModelType.INSTANCE_SEGMENTATION
    backend = "transformers"

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        spec.check_params(PARAMS)
        self.multimask = bool(spec.param("multimask_output", False, choices=(True, False)))
        threshold = spec.param("mask_threshold", 0.0)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ModelSpecError(f"params.mask_threshold of model {spec.name!r} must be a number, got {threshold!r}")
        self.mask_threshold = float(threshold)
        detector = self.detector_spec(spec)
        if detector.model_type is not ModelType.OBJECT_DETECTION:
            raise ConfigError(
                f"params.detector of model {spec.name!r} is {detector.name!r}, a {detector.model_type.value} "
                "model; the boxes that prompt the segmenter come from an object_detection model"
            )
        self.detector = self.load_detector(detector, device, threads)
        self.labels = self.detector.labels
        self.family, self.processor, model = load_sam_folder(weights)
        image_processor = self.processor.image_processor
        # SAM pads its input square (masks go up to it, then the padding is cut); SAM2 resizes square, no padding
        self.padded_size = (
            (int(image_processor.pad_size["height"]), int(image_processor.pad_size["width"]))
            if self.family == "sam"
            else None
        )
        model = model.to(device)
        self.model = model.half() if self.fp16 else model
        self.sam_input_shape = self.fixed_sam_input_shape()

    @staticmethod
    def detector_spec(spec: ModelSpec) -> ModelSpec:
        """The detector's spec: ``params.detector`` (a model name, or a spec path, relative to the chain spec's
        folder when it is not found as given), with the chain's labels, input size, letterbox and precision."""
        name = spec.params.get("detector")
        if not name or not isinstance(name, str):
            raise ModelSpecError(
                f"model {spec.name!r} needs params.detector: the object_detection model whose boxes prompt the "
                "segmenter (a model name such as yolo11n, or a spec .yaml path)"
            )
        found = None
        if spec.source and not Path(name).is_absolute() and name.endswith((".yaml", ".yml")):
            beside = Path(spec.source).parent / name
            found = find_spec(beside) if beside.is_file() else None
        detector = found or find_spec(name)
        return detector.with_overrides(
            labels=None if spec.labels_from_weights else spec.labels,
            input_size=spec.input_size,
            letterbox=spec.letterbox,
            precision=spec.precision,
            batch_size=spec.batch_size,
        )

    @abc.abstractmethod
    def load_detector(self, spec: ModelSpec, device: str, threads: int | None) -> Predictor:
        """The detector's predictor for ``spec``, loaded on ``device``."""

    def close(self) -> None:
        release = getattr(self.detector, "close", None)
        if callable(release):
            release()

    def prepare(self, image: np.ndarray) -> Prompted:
        """The detector's input, and SAM's: on a CPU SAM's input (about 10 ms of work and a 12 MB float tensor an
        image at 1024) is made in :meth:`postprocess`, for the images that keep a box only, from the picture kept
        here; on a GPU it is made here, on the loader threads, which keeps that work off the postprocess thread
        that feeds the device. Either way it is the processor's output for the same picture, bit for bit."""
        detector_input = self.detector.prepare(image)
        if self.sam_input_shape is not None and self.device == "cpu":
            return Prompted(detector_input, image.shape[:2], image=image)
        return Prompted(detector_input, image.shape[:2], sam=self.sam_input(image))

    def sam_input(self, image: np.ndarray) -> SamInput:
        """SAM's processor on one BGR picture."""
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        inputs = self.processor.image_processor(images=rgb, return_tensors="pt", input_data_format="channels_last")
        if self.family == "sam":
            resized = tuple(int(x) for x in inputs["reshaped_input_sizes"][0])
        else:  # Sam2Processor scales boxes to a target_size square, whatever the image's aspect
            resized = (int(self.processor.target_size),) * 2
        return SamInput(inputs["pixel_values"][0], resized)

    def sam_input_of(self, prepared: Prompted) -> SamInput:
        """SAM's input for a prepared image: made in :meth:`prepare`, or now."""
        return prepared.sam if prepared.sam is not None else self.sam_input(prepared.image)

    def fixed_sam_input_shape(self) -> tuple[int, ...] | None:
        """The shape of SAM's ``pixel_values`` when the processor gives every picture the same one (it pads or
        resizes square: SAM and SAM2 as saved by transformers), found on two small pictures of other shapes;
        ``None`` when it depends on the picture (then SAM's input is made in :meth:`prepare` and its shape is part
        of the batch key: a batch's images are encoded together)."""
        sizes = ((8, 16, 3), (24, 8, 3))
        shapes = {tuple(self.sam_input(np.zeros(size, np.uint8)).pixel_values.shape) for size in sizes}
        return shapes.pop() if len(shapes) == 1 else None

    def batch_key(self, prepared: Prompted) -> Hashable:
        sam_shape = self.sam_input_shape or tuple(self.sam_input_of(prepared).pixel_values.shape)
        return (self.detector.batch_key(prepared.detector_input), sam_shape)

    def collate(self, prepared: Sequence[Prompted]) -> Any:
        """The detector's batch only: SAM's pixels go to the device in :meth:`postprocess`, for the images that
        have boxes to segment."""
        return self.detector.collate([p.detector_input for p in prepared])

    def forward(self, batch: Any) -> Any:
        return self.detector.forward(batch)

    def image_embeddings(self, inputs: Sequence[SamInput]) -> Any:
        """SAM's image encoder over these images at once (SAM2: its feature levels)."""
        import torch

        pixels = queued_to_device(torch.stack([p.pixel_values for p in inputs]), self.device)
        pixels = pixels.half() if self.fp16 else pixels.float()
        step = CPU_ENCODER_BATCH if self.device == "cpu" else len(pixels)
        parts = [self.model.get_image_embeddings(pixels[i : i + step]) for i in range(0, len(pixels), step)]
        if len(parts) == 1:
            return parts[0]
        if isinstance(parts[0], (list, tuple)):  # SAM2: feature levels
            return [torch.cat(level) for level in zip(*parts)]
        return torch.cat(parts)

    def box_prompts(self, boxes: np.ndarray, orig_shape: tuple[int, int], sam: SamInput) -> np.ndarray:
        """``boxes`` (xyxy, original pixels) scaled to SAM's input as the family's processor scales them."""
        if self.family == "sam":
            return sam_box_prompts(boxes, orig_shape, sam.resized_shape)
        return sam2_box_prompts(boxes, orig_shape, sam.resized_shape[0])

    def postprocess(
        self, raw: Any, prepared: Sequence[Prompted], *, label_filter: Any = None, **options: Any
    ) -> list[Detections]:
        """The detector's boxes the run's filter keeps, each with its SAM mask (see the module docstring)."""
        found = self.detector.postprocess(raw, [p.detector_input for p in prepared], **options)
        boxes = [d[kept_by_filter(d, label_filter)] for d in found]
        counts = [len(d) for d in boxes]
        if not sum(counts):
            return [without_instances(d, p.orig_shape) for d, p in zip(boxes, prepared)]
        # the encoder, the costliest model of the two, runs on the images with boxes to segment only
        segmented = [i for i, n in enumerate(counts) if n]
        sam = {i: self.sam_input_of(prepared[i]) for i in segmented}
        embeddings = self.image_embeddings([sam[i] for i in segmented])
        image_index = np.repeat(np.arange(len(segmented)), [counts[i] for i in segmented])
        prompts = np.concatenate([self.box_prompts(boxes[i].xyxy, prepared[i].orig_shape, sam[i]) for i in segmented])
        low_res, scores = decode_boxes(self.model, embeddings, image_index, prompts, self.multimask)
        scores = scores.float().cpu().numpy()
        results, start = [], 0
        for i, (detections, item, n) in enumerate(zip(boxes, prepared, counts)):
            mine = slice(start, start + n)
            start += n
            if not n:
                results.append(without_instances(detections, item.orig_shape))
                continue
            masks = masks_at_original(
                low_res[mine], self.padded_size, sam[i].resized_shape, item.orig_shape, self.mask_threshold
            )
            bounds = tight_bounds(masks).cpu().numpy()
            host = masks.cpu().numpy()
            masked = with_mask_scores(dataclasses.replace(detections, mask=host, mask_bounds=bounds), scores[mine])
            nonempty = bounds[:, 2] > bounds[:, 0]
            results.append(masked if nonempty.all() else masked[nonempty])
        return results
