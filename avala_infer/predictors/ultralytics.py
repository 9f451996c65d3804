"""ultralytics checkpoints (``.pt``: YOLOv5u, v8, 11; detection and ``-seg``) run directly with torch.

ultralytics is used only to unpickle the checkpoint; pre- and post-processing are ours (see ``yolo.py``),
batched, with the model in channels-last layout (faster on CPU and on tensor cores).

Unpickling runs code: the engine loads a checkpoint only once :func:`avala_infer.trust.check_weights` trusts it.
While one loads, ultralytics' auto-install (``pip install`` of a module the checkpoint names) is off, and only an
existing local file is passed, so ultralytics neither installs nor downloads anything.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from avala_infer.errors import ConfigError, ModelLoadError
from avala_infer.predictors.base import ReplicaPool
from avala_infer.predictors.yolo import Letterboxed, YoloDetector
from avala_infer.predictors.yolo_seg import YoloSegmenter
from avala_infer.specs import ModelSpec

log = logging.getLogger(__name__)

TASKS = {"detect": "object_detection", "segment": "instance_segmentation"}


_SETTINGS_LOCK = threading.Lock()


@contextlib.contextmanager
def no_autoinstall() -> Iterator[None]:
    """ultralytics' auto-install off for the duration (restored after): a checkpoint that names a module that is
    not installed fails to load instead of running ``pip install`` for it (``torch_safe_load`` would).

    ``check_requirements`` reads the module global ``ultralytics.utils.checks.AUTOINSTALL`` (from the
    ``YOLO_AUTOINSTALL`` env, read once at import) on every call; setting it here changes no environment variable.
    """
    from ultralytics.utils import checks

    with _SETTINGS_LOCK:
        before = checks.AUTOINSTALL
        checks.AUTOINSTALL = False
        try:
            yield
        finally:
            checks.AUTOINSTALL = before


def load_ultralytics_module(weights: Path):
    """Load an ultralytics checkpoint as a fused fp32 ``nn.Module`` in eval mode, on the CPU.

    The caller has checked that the file may be unpickled (:func:`avala_infer.trust.check_weights`).
    """
    weights = Path(weights).resolve()
    if not weights.is_file():  # ultralytics would try to download a missing file by its name
        raise ModelLoadError(f"no checkpoint file at {weights}; avala-infer never downloads weights")
    try:
        from ultralytics.nn.tasks import load_checkpoint

        with no_autoinstall():
            model, _ = load_checkpoint(str(weights), device="cpu", fuse=False)
            model = model.fuse(verbose=False) if hasattr(model, "fuse") else model  # no summary printed to stdout
    except Exception as exc:  # unpickling errors come in many types
        raise ModelLoadError(f"cannot load {weights} as an ultralytics checkpoint: {exc}") from exc
    return model


def stack_to_device(prepared: Sequence[Letterboxed], device: str, fp16: bool):
    """Stack letterboxed BGR uint8 images into a normalised RGB NCHW tensor (channels-last) on ``device``."""
    import torch

    batch = torch.from_numpy(np.stack([p.image for p in prepared]))
    if device != "cpu":
        batch = batch.pin_memory().to(device, non_blocking=True)
    batch = batch.permute(0, 3, 1, 2).flip(1)  # BHWC BGR -> BCHW RGB
    batch = batch.half() if fp16 else batch.float()
    return batch.div_(255).contiguous(memory_format=torch.channels_last)


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
        self.stride = max(int(model.stride.max()), 32)
        model = model.to(device).to(memory_format=torch.channels_last)
        self.model = model.half() if self.fp16 else model.float()
        # the Detect head caches anchors per input shape on itself: one copy per concurrent stream
        self.replicas = ReplicaPool(self.model, spare_copies=threads is not None)

    def collate(self, prepared: Sequence[Letterboxed]):
        return stack_to_device(prepared, self.device, self.fp16)

    def forward(self, batch):
        with self.replicas.acquire() as model:
            out = model(batch)
        return out[0] if isinstance(out, (list, tuple)) else out  # detect: a tensor; segment: (raw, protos)


class UltralyticsSegmenter(YoloSegmenter, UltralyticsDetector):
    """ultralytics ``-seg`` checkpoints: boxes and instance masks."""
