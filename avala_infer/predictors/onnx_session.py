"""Opening an onnxruntime ``InferenceSession`` on the provider a device asks for: what every ONNX backend shares.

CUDA provider when the device is CUDA (an error if onnxruntime-gpu is missing: never a silent CPU run), CPU
provider otherwise; the provider in use is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

from avala_infer.errors import BackendUnavailableError, ModelLoadError

log = logging.getLogger(__name__)


def open_session(weights: Path, device: str, threads: int | None = None):
    """An ``InferenceSession`` on the provider ``device`` asks for, or a clear error; ``threads`` caps the
    intra-op threads of one run (several runs may go at once)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailableError(
                f"device {device} asked for, but onnxruntime offers only {available}; "
                "pip install onnxruntime-gpu (and uninstall onnxruntime), or use --device cpu"
            )
        providers = [("CUDAExecutionProvider", {"device_id": int(device.split(":")[1])}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(weights), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelLoadError(f"onnxruntime cannot load {weights}: {exc}") from exc
    used = session.get_providers()[0]
    if device.startswith("cuda") and used != "CUDAExecutionProvider":
        raise BackendUnavailableError(f"onnxruntime could not start the CUDA provider for {weights} (got {used})")
    log.info("onnxruntime runs %s with %s", weights.name, used)
    return session
