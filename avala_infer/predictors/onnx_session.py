"""Opening an onnxruntime ``InferenceSession`` on the provider a device and a spec ask for: what every ONNX backend
shares.

On a CPU device the CPU provider. On a CUDA device the CUDA provider (the spec's ``onnx_provider: auto``, the
default), or TensorRT with the CUDA provider behind it for the nodes TensorRT cannot take (``onnx_provider:
tensorrt``). What was asked for must start: a missing onnxruntime-gpu, TensorRT library or GPU is a
:class:`BackendUnavailableError` that says what to install, never a silent run on a slower provider (onnxruntime
itself falls back with a warning only). The provider in use is logged.

On the CPU provider the session runs the graph with :mod:`avala_infer.predictors.onnx_graph`'s rewrites (a YOLO
export's DFL Softmax, ~9% of its forward pass, made cheap; outputs unchanged, bit for bit), with the intra-op
threads the engine gives it (``cores // streams``: several narrow runs side by side; onnxruntime's own default,
the reference's, is one wide run on every physical core).

TensorRT (see :func:`tensorrt_options`): fp16 kernels when the spec's precision is ``fp16`` or ``auto`` (auto
means fp16 on CUDA, as for the torch backends); engines and the timing cache kept in an engine cache folder, so
only the first run of a model builds (minutes); and one optimization profile spanning every input shape the
predictor will send (``input_range``), so no batch in a run rebuilds the engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avala_infer.errors import BackendUnavailableError, ConfigError, ModelLoadError
from avala_infer.predictors.onnx_graph import cpu_graph
from avala_infer.specs import ModelSpec

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
INSTALL_GPU = "pip install onnxruntime-gpu (and uninstall onnxruntime)"
INSTALL_TENSORRT = (
    "install onnxruntime-gpu and TensorRT 10 (`pip install tensorrt`, or NVIDIA's libnvinfer packages) with its "
    "libraries on LD_LIBRARY_PATH"
)


@dataclasses.dataclass(frozen=True)
class InputRange:
    """The smallest, the usual and the largest shape a predictor feeds the model's first input (NCHW for images):
    TensorRT builds one engine for the whole range and tunes it for ``opt``."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def device_index(device: str) -> int:
    """``cuda:N`` -> N (a resolved device string; see ``predictors.base.resolve_device``)."""
    return int(device.split(":")[1])


def execution_providers(
    device: str, asked: str, available: Sequence[str], tensorrt: dict[str, Any] | None = None
) -> list:
    """The ``providers`` list for an ``InferenceSession``: what ``device`` and the spec's ``onnx_provider``
    (``asked``) need, checked against what this onnxruntime offers (``available``); a
    :class:`BackendUnavailableError` that says what to install when it cannot be had. ``tensorrt``: the TensorRT
    provider's options (:func:`tensorrt_options`)."""
    if asked == "tensorrt":
        if TENSORRT not in available:
            raise BackendUnavailableError(
                f"onnx_provider: tensorrt asked for, but this onnxruntime offers only {list(available)}; "
                f"{INSTALL_TENSORRT}, and run on a CUDA device; or set onnx_provider: auto"
            )
        if not device.startswith("cuda"):
            raise BackendUnavailableError(
                f"onnx_provider: tensorrt runs on a CUDA GPU, not on device {device}; pass --device cuda (or "
                "auto on a GPU host), or set onnx_provider: auto to run on the CPU"
            )
        index = device_index(device)
        return [(TENSORRT, {"device_id": index, **(tensorrt or {})}), (CUDA, {"device_id": index}), CPU]
    if device.startswith("cuda"):
        if CUDA not in available:
            raise BackendUnavailableError(
                f"device {device} asked for, but onnxruntime offers only {list(available)}; {INSTALL_GPU}, "
                "or use --device cpu"
            )
        return [(CUDA, {"device_id": device_index(device)}), CPU]
    return [CPU]


def default_engine_cache() -> Path:
    """Where TensorRT engines go when the spec names no ``engine_cache``: ``$AVALA_INFER_HOME/cache/tensorrt``,
    else ``$XDG_CACHE_HOME/avala-infer/tensorrt`` (``~/.cache/avala-infer/tensorrt``)."""
    if os.environ.get("AVALA_INFER_HOME"):
        return Path(os.environ["AVALA_INFER_HOME"]).expanduser() / "cache" / "tensorrt"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "avala-infer" / "tensorrt"


def engine_cache_root(spec: ModelSpec) -> Path:
    """The spec's ``engine_cache`` folder (a relative one is relative to the spec file's folder), or the default."""
    if spec.engine_cache is None:
        return default_engine_cache()
    folder = Path(spec.engine_cache).expanduser()
    if not folder.is_absolute():
        folder = (Path(spec.source).parent if spec.source else Path.cwd()) / folder
    return folder


def weights_digest(weights: Path) -> str:
    """The first 16 hex digits of the weights file's sha256 (onnxruntime names a cached engine after the model's
    file name and graph, not its bytes: retrained weights under the same name would load the old engine)."""
    digest = hashlib.sha256()
    with open(weights, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def profile_shapes(inputs: Sequence[tuple[str, Sequence[Any]]], input_range: InputRange | None) -> dict[str, str]:
    """``trt_profile_{min,opt,max}_shapes`` for the first input, its dynamic dimensions taken from
    ``input_range`` (its fixed ones stay). Empty when there is no range, nothing is dynamic, or another input is
    dynamic too (TensorRT then wants every dynamic input named: it learns the ranges from the batches instead)."""

    def dynamic(shape: Sequence[Any]) -> bool:
        return any(not isinstance(dim, int) for dim in shape)

    if input_range is None or not inputs or not dynamic(inputs[0][1]):
        return {}
    if any(dynamic(shape) for _, shape in inputs[1:]):
        return {}
    name, shape = inputs[0]
    if not len(shape) == len(input_range.min) == len(input_range.opt) == len(input_range.max):
        return {}

    def text(dims: tuple[int, ...]) -> str:
        return f"{name}:" + "x".join(str(d if isinstance(d, int) else r) for d, r in zip(shape, dims))

    return {
        "trt_profile_min_shapes": text(input_range.min),
        "trt_profile_opt_shapes": text(input_range.opt),
        "trt_profile_max_shapes": text(input_range.max),
    }


def tensorrt_options(
    spec: ModelSpec,
    weights: Path,
    inputs: Sequence[tuple[str, Sequence[Any]]] = (),
    input_range: InputRange | None = None,
) -> dict[str, Any]:
    """The TensorRT provider's options for ``spec``: fp16 from its precision (``fp16``, or ``auto``: TensorRT
    runs on CUDA only), engines under ``<engine cache>/<weights digest>``, the timing cache (shared by every
    model: it is keyed by layer) in the cache folder itself, and the profile of :func:`profile_shapes`."""
    root = engine_cache_root(spec)
    return {
        "trt_fp16_enable": spec.precision in ("fp16", "auto"),
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(root / weights_digest(weights)),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(root),
        **profile_shapes(inputs, input_range),
    }


def graph_inputs(weights: Path) -> list[tuple[str, list]]:
    """The model's inputs and their shapes (a name or ``None`` for a dynamic dimension), read by a throwaway CPU
    session with no graph optimisation (the TensorRT options must be known before the real session opens)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        probe = ort.InferenceSession(str(weights), sess_options=options, providers=[CPU])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelLoadError(f"onnxruntime cannot load {weights}: {exc}") from exc
    return [(i.name, list(i.shape)) for i in probe.get_inputs()]


def open_session(
    weights: Path,
    device: str,
    threads: int | None = None,
    *,
    spec: ModelSpec | None = None,
    input_range: InputRange | None = None,
):
    """An ``InferenceSession`` on the provider ``device`` and ``spec.onnx_provider`` ask for, or a clear error;
    ``threads`` caps the intra-op threads of one run (several runs may go at once); ``input_range`` (TensorRT
    only): the input shapes the caller will send."""
    import onnxruntime as ort

    asked = spec.onnx_provider if spec is not None else "auto"
    available = ort.get_available_providers()
    execution_providers(device, asked, available)  # refuse before anything is read, hashed or built
    trt = None
    if asked == "tensorrt":
        trt = tensorrt_options(spec, weights, graph_inputs(weights), input_range)
        try:
            Path(trt["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the TensorRT engine cache {trt['trt_engine_cache_path']}: {exc}; name a writable "
                "folder in the spec's engine_cache (or set AVALA_INFER_HOME)"
            ) from exc
    providers = execution_providers(device, asked, available, trt)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    # on the CPU provider, the graph with the rewrites that make its kernels faster (same outputs, bit for bit)
    model = (cpu_graph(weights) if providers == [CPU] else None) or str(weights)
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelLoadError(f"onnxruntime cannot load {weights}: {exc}") from exc
    used = session.get_providers()[0]
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    if used != wanted:  # onnxruntime starts the next provider when one fails to load (missing libraries)
        how = INSTALL_TENSORRT if wanted == TENSORRT else INSTALL_GPU + " and check that CUDA and cuDNN load"
        raise BackendUnavailableError(
            f"onnxruntime could not start the {wanted} for {weights} (it offered {used}); {how}"
        )
    if trt is not None:
        log.info(
            "onnxruntime runs %s with %s (fp16 %s, engine cache %s)",
            weights.name, used, trt["trt_fp16_enable"], trt["trt_engine_cache_path"],
        )  # fmt: skip
    else:
        log.info("onnxruntime runs %s with %s", weights.name, used)
    return session
