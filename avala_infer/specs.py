"""Model specs: which weights a model name means, and how to run them.

A spec is a small YAML file (see ``models/`` in the repository)::

    name: yolo11n
    model_type: object_detection
    backend: ultralytics
    weights: yolo11n.pt          # a file name looked up in the weights folders, or a path
    labels: from_weights         # or a list of names, or a path to a text file (one per line)
    input_size: 640              # optional; each backend has its default (YOLO 640, classifiers their own size)
    batch_size: 8
    precision: auto              # auto: fp16 on CUDA, fp32 on CPU; or fp32 / fp16
    letterbox: rect              # rect: pad to a stride multiple (ultralytics predict); square: pad to input_size
    params: {}                   # backend-specific settings, checked by the predictor (see its docstring)
    sha256: <64 hex digits>      # optional: the weights file must have this hash, else nothing is loaded
    url: https://.../yolo11n.pt  # optional: where `avala-infer models pull NAME` fetches the weights from
    onnx_provider: auto          # onnxruntime YOLO models: auto (the device's: CUDA or CPU) or tensorrt
    engine_cache: trt-engines/   # optional, with tensorrt: where built engines are kept (see below)
    torch_compile: reduce-overhead  # optional, ultralytics YOLO and transformers text models: a torch.compile mode

``weights`` may also name a folder (transformers models). Paths in ``params`` that name files (a tokenizer
folder, say) are resolved like weights by :func:`resolve_path`.

Specs are found in ``$AVALA_INFER_SPECS`` (folders, ``os.pathsep``-separated), then the specs that ship with
the package (the repository's ``models/`` when running from a source checkout), then
``<user config>/avala-infer/models``. A spec file that cannot be read is an error only when that model is asked
for (by its ``name:`` or its file name); listings show it with its problem. Weights are found by explicit path,
else by file name in ``$AVALA_INFER_MODELS`` (folders, ``os.pathsep``-separated), else
``<user data>/avala-infer/models``. Nothing is downloaded while labeling: only ``avala-infer models pull NAME``
(:mod:`avala_infer.pull`) fetches a spec's ``url``, on request. Whether pickled weights may be loaded, and the
``sha256`` check, are :mod:`avala_infer.trust`'s business.

Runtime options (launch cost on a GPU; each is refused on a backend that would not read it):

``onnx_provider`` (``backend: onnxruntime``, YOLO detection and segmentation): ``auto`` runs the CUDA provider on a
CUDA device and the CPU provider on a CPU. ``tensorrt`` runs NVIDIA TensorRT (the CUDA provider takes the nodes
TensorRT cannot): it needs onnxruntime-gpu, TensorRT 10's libraries and a CUDA device, else the model does not
load (a ``BackendUnavailableError`` says what to install; never a silent run on another provider). With it,
``precision`` ``fp16`` or ``auto`` builds fp16 engines (``fp32``: fp32 engines); the first load of a model builds
its engine (minutes) for every batch size up to ``batch_size`` and every input up to ``input_size`` (rect
letterboxing: one engine for all its shapes), later loads read it from the engine cache folder: ``engine_cache``
(relative to the spec file's folder), else ``$AVALA_INFER_HOME/cache/tensorrt``, else
``~/.cache/avala-infer/tensorrt`` (``$XDG_CACHE_HOME``), one subfolder per weights file's content.

``torch_compile`` (``backend: ultralytics``, YOLO detection and segmentation): compile the network with
``torch.compile`` in this mode: ``default`` (also ``true``), ``reduce-overhead`` (on CUDA it replays CUDA graphs,
one per input shape: the launch cost of ~250 kernels per batch goes), ``max-autotune`` or
``max-autotune-no-cudagraphs``. Off by default: the first batch of each input shape compiles (tens of seconds on a
GPU host; ~10 minutes on a busy 2-core CPU, where inductor builds C++ kernels and needs a C++ compiler), each CPU
stream's copy of the model compiles on its own, and torch compiles at most 8 shapes (its recompile limit) and runs
the rest uncompiled: pair it with square letterboxing, the CUDA default. Outputs equal eager ones within float
tolerance, not bit for bit (``benchmarks/bench_compile.py``). On CUDA the ultralytics backend also turns on
``cudnn.benchmark`` (the fastest convolution for the input shape, tried on its first batch) when letterboxing is
square: one input shape, so the trial is paid once.

``torch_compile`` with ``backend: transformers`` (text classification, zero-shot included, and NER): the same
modes. A compiled text model runs fixed shapes only: every call is ``batch_size`` rows (a short batch padded
with rows it drops) of a length bucket's width (16, 24, 32, 48, 64, 96, 128...: a batch's longest row rounded up,
the rest masked), so one compile serves a length bucket, and torch's recompile limit is raised to four times the
number of buckets (four compiled copies of a model at once: a predictor a GPU). Padding changes no row's logits
beyond float rounding (the rows are independent, padded tokens masked).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from avala_infer.errors import ModelSpecError, UnknownModelError, WeightsNotFoundError
from avala_infer.types import ModelType

log = logging.getLogger(__name__)

SPEC_SUFFIXES = (".yaml", ".yml")
WEIGHT_BACKENDS = {".pt": "ultralytics", ".onnx": "onnxruntime"}
PRECISIONS = ("auto", "fp32", "fp16")
URL_SCHEMES = ("https", "http", "file")  # a spec's url: where `models pull` fetches its weights
LETTERBOX_MODES = ("rect", "square")
ONNX_PROVIDERS = ("auto", "tensorrt")
TORCH_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# the model types whose backends read the runtime options (anywhere else an option would be ignored: refused)
RUNTIME_OPTION_TYPES = (ModelType.OBJECT_DETECTION, ModelType.INSTANCE_SEGMENTATION)
# torch_compile: the backends that read it, and for which model types
TORCH_COMPILE_TYPES = {
    "ultralytics": RUNTIME_OPTION_TYPES,
    "transformers": (ModelType.TEXT_CLASSIFICATION, ModelType.NAMED_ENTITY_RECOGNITION),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to load and run one model; data, not code."""

    name: str
    model_type: ModelType
    backend: str
    weights: str
    labels: tuple[str, ...] | str = "from_weights"
    input_size: int | None = None  # None: the predictor's default (640 for YOLO, the model's own size...)
    batch_size: int = 8
    precision: str = "auto"
    letterbox: str = "rect"
    description: str = ""
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source: str | None = None  # the YAML file this spec came from, if any
    sha256: str | None = None  # the weights file's pinned hash (hex); a mismatch is refused before loading
    url: str | None = None  # where `avala-infer models pull` fetches the weights file (never fetched otherwise)
    onnx_provider: str = "auto"  # onnxruntime's execution provider: auto (the device's) or tensorrt
    engine_cache: str | None = None  # TensorRT engines' folder; None: the default (onnx_session.default_engine_cache)
    torch_compile: str | None = None  # a torch.compile mode (ultralytics YOLO, transformers text); None: eager

    def __post_init__(self) -> None:
        where = f" in {self.source}" if self.source else ""
        if self.precision not in PRECISIONS:
            raise ModelSpecError(f"precision {self.precision!r}{where} is not one of {', '.join(PRECISIONS)}")
        if self.letterbox not in LETTERBOX_MODES:
            raise ModelSpecError(f"letterbox {self.letterbox!r}{where} is not one of {', '.join(LETTERBOX_MODES)}")
        try:
            too_small = (self.input_size is not None and int(self.input_size) < 32) or int(self.batch_size) < 1
        except (TypeError, ValueError):
            raise ModelSpecError(
                f"input_size and batch_size must be whole numbers{where}, got {self.input_size!r}, {self.batch_size!r}"
            ) from None
        if too_small:
            raise ModelSpecError(f"input_size must be >= 32 and batch_size >= 1{where}")
        if not isinstance(self.params, Mapping):
            raise ModelSpecError(f"params{where} must be a mapping of settings, got {type(self.params).__name__}")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ModelSpecError(
                f"sha256 {self.sha256!r}{where} is not a sha256 hash: give the 64 lower-case hex digits "
                "that `sha256sum WEIGHTS` prints"
            )
        if self.url is not None and (
            not isinstance(self.url, str) or self.url.partition("://")[0].lower() not in URL_SCHEMES
        ):
            raise ModelSpecError(
                f"url {self.url!r}{where} is not a download address: give a {'/'.join(URL_SCHEMES)}:// URL of the "
                "weights file"
            )
        self._check_runtime_options(where)

    def _check_runtime_options(self, where: str) -> None:
        """``onnx_provider``, ``engine_cache`` and ``torch_compile``: known values, and only where a backend reads
        them (a TensorRT or compile request that nothing reads would run without it, silently)."""
        if self.onnx_provider not in ONNX_PROVIDERS:
            raise ModelSpecError(
                f"onnx_provider {self.onnx_provider!r}{where} is not one of {', '.join(ONNX_PROVIDERS)}"
            )
        if self.torch_compile is not None and self.torch_compile not in TORCH_COMPILE_MODES:
            raise ModelSpecError(
                f"torch_compile {self.torch_compile!r}{where} is not a torch.compile mode: use one of "
                f"{', '.join(TORCH_COMPILE_MODES)}, or leave it out (eager)"
            )
        types = " or ".join(t.value for t in RUNTIME_OPTION_TYPES)
        if self.onnx_provider != "auto" and (
            self.backend != "onnxruntime" or self.model_type not in RUNTIME_OPTION_TYPES
        ):
            raise ModelSpecError(
                f"onnx_provider {self.onnx_provider!r}{where} is read only by backend onnxruntime for {types} "
                f"models, not {self.backend} {self.model_type.value}"
            )
        if self.engine_cache is not None and self.onnx_provider != "tensorrt":
            raise ModelSpecError(f"engine_cache{where} is read only with onnx_provider: tensorrt")
        if self.torch_compile is not None and self.model_type not in TORCH_COMPILE_TYPES.get(self.backend, ()):
            readers = "; ".join(
                f"backend {backend} for {' or '.join(t.value for t in kinds)} models"
                for backend, kinds in TORCH_COMPILE_TYPES.items()
            )
            raise ModelSpecError(
                f"torch_compile{where} is read only by {readers}, not {self.backend} {self.model_type.value}"
            )

    def param(self, key: str, default: Any = None, choices: tuple | None = None) -> Any:
        """``params[key]`` or ``default``; with ``choices``, a value outside them is a :class:`ModelSpecError`."""
        value = self.params.get(key, default)
        if choices is not None and value not in choices:
            where = f" in {self.source}" if self.source else ""
            raise ModelSpecError(
                f"params.{key} of model {self.name!r}{where} is {value!r}; use one of {', '.join(map(str, choices))}"
            )
        return value

    def check_params(self, known: set[str] | frozenset[str]) -> None:
        """Refuse params the predictor does not read (a typo would otherwise be ignored silently)."""
        unknown = sorted(set(self.params) - set(known))
        if unknown:
            where = f" in {self.source}" if self.source else ""
            raise ModelSpecError(
                f"model {self.name!r}{where} has unknown params {unknown}; {self.backend} "
                f"{self.model_type.value} reads: {', '.join(sorted(known)) or 'none'}"
            )

    @property
    def labels_from_weights(self) -> bool:
        return self.labels == "from_weights"

    def with_overrides(self, **changes: object) -> ModelSpec:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _env_dirs(var: str) -> list[Path]:
    return [Path(p).expanduser() for p in os.environ.get(var, "").split(os.pathsep) if p.strip()]


def _user_dir(xdg_var: str, fallback: str) -> Path:
    base = os.environ.get(xdg_var) or str(Path.home() / fallback)
    return Path(base) / "avala-infer" / "models"


def _is_source_checkout(root: Path) -> bool:
    """Whether ``root`` is this project's repository (its ``pyproject.toml`` names avala-infer), not, say, the
    site-packages folder a wheel was installed into."""
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, ValueError):
        return False
    return re.search(r"""^name\s*=\s*["']avala-infer["']""", text, re.MULTILINE) is not None


def spec_dirs() -> list[Path]:
    """Folders searched for ``*.yaml`` model specs, in priority order: ``$AVALA_INFER_SPECS``, the specs shipped
    with the package (a wheel's ``_bundled_models``; in a source checkout or editable install the repository's
    ``models/``), then the user config folder. Nothing else: a wheel's ``site-packages/models`` is not ours."""
    package = Path(__file__).resolve().parent
    shipped = [package / "_bundled_models"]  # wheels ship the repository's models/ here
    if _is_source_checkout(package.parent):
        shipped.append(package.parent / "models")
    return [*_env_dirs("AVALA_INFER_SPECS"), *shipped, _user_dir("XDG_CONFIG_HOME", ".config")]


def weights_dirs() -> list[Path]:
    """Folders searched for weights files by name, in priority order."""
    return [*_env_dirs("AVALA_INFER_MODELS"), _user_dir("XDG_DATA_HOME", ".local/share")]


def load_spec(path: str | Path) -> ModelSpec:
    """Read one spec file; a missing field or a bad value is a :class:`ModelSpecError` naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: not UTF-8
        raise ModelSpecError(f"cannot read model spec {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelSpecError(f"model spec {path} must be a YAML mapping of fields, got {type(data).__name__}")
    missing = [f for f in ("name", "model_type", "backend", "weights") if not data.get(f)]
    if missing:
        raise ModelSpecError(f"model spec {path} lacks required field(s): {', '.join(missing)}")
    known = {f.name for f in dataclasses.fields(ModelSpec)} - {"source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ModelSpecError(f"model spec {path} has unknown field(s) {unknown}; known fields: {sorted(known)}")
    labels = data.get("labels", "from_weights")
    if isinstance(labels, list):
        labels = tuple(str(x) for x in labels)
    elif labels != "from_weights":
        labels_path = (path.parent / str(labels)).resolve()
        if not labels_path.is_file():
            raise ModelSpecError(f"labels file {labels_path} named by model spec {path} does not exist")
        try:
            lines = labels_path.read_text(encoding="utf-8").splitlines()
        except (OSError, ValueError) as exc:
            raise ModelSpecError(f"cannot read labels file {labels_path} named by model spec {path}: {exc}") from exc
        labels = tuple(line.strip() for line in lines if line.strip())
    try:
        return ModelSpec(
            name=str(data["name"]),
            model_type=ModelType.parse(data["model_type"]),
            backend=str(data["backend"]),
            weights=str(data["weights"]),
            labels=labels,
            input_size=None if data.get("input_size") is None else int(data["input_size"]),
            batch_size=int(data.get("batch_size", 8)),
            precision=str(data.get("precision", "auto")),
            letterbox=str(data.get("letterbox", "rect")),
            description=str(data.get("description", "")),
            params=data.get("params") or {},
            source=str(path),
            sha256=None if data.get("sha256") is None else str(data["sha256"]).strip().lower().removeprefix("sha256:"),
            url=None if data.get("url") is None else str(data["url"]).strip(),
            onnx_provider=str(data.get("onnx_provider", "auto")).strip().lower(),
            engine_cache=None if data.get("engine_cache") is None else str(data["engine_cache"]),
            torch_compile=_compile_mode(data.get("torch_compile")),
        )
    except ModelSpecError:
        raise
    except (ValueError, TypeError) as exc:
        raise ModelSpecError(f"model spec {path}: {exc}") from exc


def _compile_mode(value: object) -> str | None:
    """A spec's ``torch_compile``: ``None``, ``false``, ``off`` or ``none`` mean eager, ``true`` the default mode;
    else the mode's name."""
    if value is None or value is False or str(value).strip().lower() in ("off", "none", "false"):
        return None
    if value is True:
        return "default"
    return str(value).strip().lower()


@dataclasses.dataclass(frozen=True)
class SpecFile:
    """One spec file found in the spec folders: its spec, or the error that reading it raised."""

    path: Path
    spec: ModelSpec | None = None
    error: ModelSpecError | None = None
    declared_name: str | None = None  # the ``name:`` of a broken spec, when the YAML could be read that far

    @property
    def name(self) -> str:
        """The model name it answers to: its spec's name, else the name it declares, else the file name stem."""
        if self.spec is not None:
            return self.spec.name
        return self.declared_name or self.path.stem

    def answers_to(self, name: str) -> bool:
        if self.spec is not None:
            return self.spec.name == name
        return name in (self.path.stem, self.declared_name)


def _declared_name(path: Path) -> str | None:
    """The ``name:`` a spec file declares, if it can be read that far (for naming a broken spec)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return str(name) if isinstance(name, (str, int, float)) and str(name) else None


def scan_specs() -> Iterator[SpecFile]:
    """Every spec file in :func:`spec_dirs`, in priority order, each read on its own: a broken one comes with
    its error instead of stopping the scan. Names may repeat (the first one wins in :func:`find_spec`)."""
    for folder in spec_dirs():
        try:
            paths = sorted(p for p in folder.iterdir() if p.suffix in SPEC_SUFFIXES and p.is_file())
        except OSError:  # absent or unreadable folder
            continue
        for path in paths:
            try:
                yield SpecFile(path, spec=load_spec(path))
            except ModelSpecError as exc:
                log.debug("skipping broken model spec %s: %s", path, exc)
                yield SpecFile(path, error=exc, declared_name=_declared_name(path))


def iter_specs() -> Iterator[ModelSpec]:
    """Every readable spec found, first one wins for a given name (broken ones: :func:`scan_specs`)."""
    seen: set[str] = set()
    for found in scan_specs():
        if found.spec is not None and found.spec.name not in seen:
            seen.add(found.spec.name)
            yield found.spec


def spec_from_weights(path: Path) -> ModelSpec:
    """A spec for a bare weights file: backend from its suffix, model type from its name."""
    backend = WEIGHT_BACKENDS.get(path.suffix.lower())
    if backend is None:
        raise UnknownModelError(
            f"cannot tell which backend runs {path}: known weight suffixes are {', '.join(WEIGHT_BACKENDS)}; "
            "write a model spec YAML for it instead"
        )
    stem = path.stem.lower()
    if stem.endswith("-seg"):
        model_type = ModelType.INSTANCE_SEGMENTATION
    elif stem.endswith("-cls"):
        model_type = ModelType.IMAGE_CLASSIFICATION
    else:
        model_type = ModelType.OBJECT_DETECTION
    return ModelSpec(name=path.stem, model_type=model_type, backend=backend, weights=str(path.resolve()))


def find_spec(name_or_path: str | Path) -> ModelSpec:
    """Resolve a model name, a spec file or a weights file to a spec."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix in SPEC_SUFFIXES and path.is_file():
        return load_spec(path)
    if path.suffix.lower() in WEIGHT_BACKENDS and path.is_file():
        return spec_from_weights(path)
    if path.suffix.lower() in WEIGHT_BACKENDS and len(path.parts) == 1:  # a file name: look in the model folders
        for folder in weights_dirs():
            if (folder / path.name).is_file():
                return spec_from_weights(folder / path.name)
    found = list(scan_specs())
    for entry in found:
        if entry.answers_to(text):
            if entry.spec is None:
                raise ModelSpecError(str(entry.error)) from entry.error  # only now, when it is asked for
            return entry.spec
    specs = [entry.spec for entry in found if entry.spec is not None]
    hint = ""
    if path.suffix.lower() in WEIGHT_BACKENDS or path.suffix in SPEC_SUFFIXES:
        hint = f" (no file at {path.resolve()})"
    names = ", ".join(dict.fromkeys(s.name for s in specs)) or "none"
    raise UnknownModelError(
        f"unknown model {text!r}{hint}. Known model names: {names}. "
        "Pass a model name, a spec .yaml, or a .pt/.onnx weights path; `avala-infer models list` shows them all"
    )


def resolve_weights(spec: ModelSpec) -> Path:
    """The weights file (or folder) for ``spec``; a missing one says where it was looked and where to put it."""
    return resolve_path(spec, spec.weights, "weights")


def resolve_path(spec: ModelSpec, name: str, what: str = "weights") -> Path:
    """A file or folder a spec names (weights, a tokenizer...), found as weights are; never downloaded."""
    given = Path(name).expanduser()
    candidates: list[Path] = []
    if given.is_absolute() or len(given.parts) > 1:
        candidates.append(given if given.is_absolute() else Path.cwd() / given)
        if spec.source and not given.is_absolute():
            candidates.append(Path(spec.source).parent / given)
    for folder in weights_dirs():
        if not given.is_absolute() and len(given.parts) > 1:
            candidates.append(folder / given)  # a file inside a model folder: ner-model/model.onnx
        candidates.append(folder / given.name)
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    searched = "\n  ".join(str(c) for c in candidates)
    put = (
        f"a folder named by AVALA_INFER_MODELS (export AVALA_INFER_MODELS=/path/to/weights) or in {weights_dirs()[-1]}"
    )
    if spec.url and name == spec.weights:  # never fetched here: a download is asked for, not hidden in a load
        how = f"Fetch it with `avala-infer models pull {spec.name}` (from {spec.url}), or put the file in {put}."
    else:
        how = f"Put the file in {put}. avala-infer downloads nothing while it labels."
    raise WeightsNotFoundError(f"{what} {name!r} for model {spec.name!r} not found. Searched:\n  {searched}\n{how}")


def weights_present(spec: ModelSpec) -> Path | None:
    """The weights path when present, else ``None`` (for listings)."""
    try:
        return resolve_weights(spec)
    except WeightsNotFoundError:
        return None
