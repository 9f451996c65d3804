"""Loading an ultralytics checkpoint (``.pt``) as a plain torch module: what the detection and the classification
ultralytics backends share.

ultralytics is used only to unpickle the checkpoint and to fuse it, with the detection head ultralytics' own
``predict`` runs by default (see :func:`default_head`). Unpickling runs code: the engine loads a checkpoint only once
:func:`avala_infer.trust.check_weights` trusts it. While one loads, ultralytics' auto-install (``pip install`` of a
module the checkpoint names) is off, and only an existing local file is passed, so ultralytics neither installs
nor downloads anything.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from avala_infer.errors import ModelLoadError

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
            default_head(model)
            model = model.fuse(verbose=False) if hasattr(model, "fuse") else model  # no summary printed to stdout
    except Exception as exc:  # unpickling errors come in many types
        raise ModelLoadError(f"cannot load {weights} as an ultralytics checkpoint: {exc}") from exc
    return model


def default_head(model) -> None:
    """Select, before fusing, the detection head ultralytics' ``predict`` runs by default, in place.

    A YOLO26 checkpoint as trained carries two heads: one-to-many (boxes for NMS) and one-to-one (end-to-end: its
    top-k rows are final). Fusing keeps only the head selected then. ultralytics' ``predict`` (``nms`` unset)
    selects the one-to-many head before fusing, whatever mode the checkpoint was saved in; a checkpoint fused
    end-to-end (only the one-to-one head left) runs end to end. The same here, so that our boxes are the
    reference's; the fused module's ``end2end`` then says which head runs. Heads with one branch (YOLOv5u to
    YOLO11, classifiers) are left alone.
    """
    import torch

    layers = getattr(model, "model", None)  # an ultralytics model's layers, the head last
    head = layers[-1] if isinstance(layers, torch.nn.Sequential) and len(layers) else None
    both = getattr(head, "cv2", None) is not None and getattr(head, "one2one_cv2", None) is not None
    if both and getattr(model, "end2end", False):
        model.end2end = False
