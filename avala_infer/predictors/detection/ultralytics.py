"""ultralytics checkpoints (``.pt``: YOLOv5u, v8, 11, 26; detection and ``-seg``) run directly with torch.

ultralytics is used only to unpickle the checkpoint (see :mod:`avala_infer.predictors.ultralytics_loading`: only
trusted files, no auto-install, no download); pre- and post-processing are ours (see :mod:`.yolo`), batched, with
the model in channels-last layout (faster on CPU and on tensor cores).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avala_infer.errors import ConfigError
from avala_infer.predictors.base import ReplicaPool
from avala_infer.predictors.detection.yolo import END_TO_END_CANDIDATES, TASKS, Letterboxed, YoloDetector
from avala_infer.predictors.detection.yolo_seg import YoloSegmenter
from avala_infer.predictors.torch_runtime import (
    compile_module,
    copy_out,
    enable_cudnn_autotune,
    mark_graph_step,
    replays_cuda_graphs,
)
from avala_infer.predictors.ultralytics_loading import load_ultralytics_module
from avala_infer.specs import ModelSpec

log = logging.getLogger(__name__)


def every_row(preds):
    """A one-to-one head's ``postprocess`` replaced: every anchor's decoded row, the top-k left to ``top_rows``."""
    return preds


def stack_to_device(prepared: Sequence[Letterboxed], device: str, fp16: bool):
    """Stack letterboxed BGR uint8 images into a normalised RGB NCHW tensor (channels-last) on ``device``.

    On CUDA the images are stacked straight into pinned (page-locked) host memory, one copy, and go to the device
    asynchronously on the current stream (the engine's side stream: it overlaps the forward pass before). The
    pinned block comes from torch's caching host allocator, reused from batch to batch; torch records the copy on
    the block and hands it out again only once the copy is done, so a batch still being copied is never
    overwritten. (``np.stack`` then ``pin_memory()`` copied every image twice.)
    """
    import torch

    images = [p.image for p in prepared]
    if device == "cpu":
        batch = torch.from_numpy(np.stack(images))
    else:
        host = torch.empty((len(images), *images[0].shape), dtype=torch.uint8, pin_memory=True)
        np.stack(images, out=host.numpy())
        batch = host.to(device, non_blocking=True)
    batch = batch.permute(0, 3, 1, 2).flip(1)  # BHWC BGR -> BCHW RGB
    batch = batch.half() if fp16 else batch.float()
    return batch.div_(255).contiguous(memory_format=torch.channels_last)


def training_size(model) -> int | None:
    """The square image size an ultralytics checkpoint was trained at (its ``args["imgsz"]``), or None.

    ultralytics' ``YOLO(path).predict()`` runs a ``.pt`` at that size unless told otherwise (it keeps ``imgsz``
    from the checkpoint's arguments), so a checkpoint named without a size (a bare path, a spec without
    ``input_size``, no ``--imgsz``) runs at it here too: a model trained at 1280 for small objects is not shrunk
    to 640, and the boxes are the ones ``predict()`` gives. A spec's or the caller's size wins."""
    args = getattr(model, "args", None)
    size = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return None
    return size


class UltralyticsDetector(YoloDetector):
    backend = "ultralytics"

    def __init__(self, spec: ModelSpec, weights: Path, device: str, threads: int | None = None) -> None:
        super().__init__(spec, weights, device, threads)
        import torch

        model = load_ultralytics_module(weights)
        task = getattr(model, "task", "detect")
        if TASKS.get(task) != self.model_type.value:
            raise ConfigError(
                f"{weights} is an ultralytics {task!r} model, not {self.model_type.value}; "
                f"set model_type to fit it in the spec"
            )
        names = getattr(model, "names", None)
        self._set_labels([names[i] for i in sorted(names)] if isinstance(names, dict) else names)
        trained = training_size(model)
        if spec.input_size is None and trained is not None:  # no size asked for: the one it was trained at
            self.request_input_size(trained)
        self.stride = max(int(model.stride.max()), 32)
        # the head left by loading (see ultralytics_loading.default_head): a one-to-one head gives final rows,
        # class-aware (agnostic_nms off, as ultralytics predict sets it). Its top-k depends on the run's max_det
        # (ultralytics predict sets it to max(max_det, 300)), which the forward pass does not see: the forward
        # returns every anchor's decoded row and postprocess takes the top-k with the head's own code (top_rows).
        # A head without that code (another ultralytics version) keeps a fixed top-k of 300
        self.end_to_end = bool(getattr(model, "end2end", False))
        self.topk_head = None
        if self.end_to_end:
            head = model.model[-1]
            head.max_det, head.agnostic_nms = END_TO_END_CANDIDATES, False
            if callable(getattr(head, "get_topk_index", None)) and callable(getattr(head, "_gather", None)):
                head.postprocess = every_row  # on the instance: replicas copy it
                self.topk_head = head
        model = model.to(device).to(memory_format=torch.channels_last)
        self.model = model.half() if self.fp16 else model.float()
        enable_cudnn_autotune(device, fixed_shapes=self.spec.letterbox == "square")
        # opt-in (spec torch_compile); each replica below compiles its own graphs on its first batches
        self.model = compile_module(self.model, self.spec.torch_compile)
        self.cuda_graphs = replays_cuda_graphs(self.spec.torch_compile, device)
        # the Detect head caches anchors per input shape on itself: one copy per concurrent stream
        self.replicas = ReplicaPool(self.model, spare_copies=threads is not None)

    def top_rows(self, preds, max_det: int):
        """The one-to-one head's final rows for a run's ``max_det``: what its ``postprocess`` gives with its top-k
        at ``max(max_det, 300)``, as ultralytics predict sets it (the same calls, here with that k)."""
        import torch

        head = self.topk_head
        if head is None:
            return preds
        k = max(max_det, END_TO_END_CANDIDATES)
        boxes, scores, *extra = preds.split([s for s in (4, head.nc, preds.shape[-1] - 4 - head.nc) if s], dim=-1)
        scores, classes, index = head.get_topk_index(scores, k)
        return torch.cat([head._gather(boxes, index), scores, classes, *(head._gather(e, index) for e in extra)], -1)

    def collate(self, prepared: Sequence[Letterboxed]):
        return stack_to_device(prepared, self.device, self.fp16)

    def forward(self, batch):
        with self.replicas.acquire() as model:
            if self.cuda_graphs:
                mark_graph_step()
            out = model(batch)
            # detect: a tensor (raw, or end-to-end rows); segment: (that, protos)
            out = out[0] if isinstance(out, (list, tuple)) else out
            return copy_out(out) if self.cuda_graphs else out  # before the next replay overwrites it


class UltralyticsSegmenter(YoloSegmenter, UltralyticsDetector):
    """ultralytics ``-seg`` checkpoints: boxes and instance masks."""
