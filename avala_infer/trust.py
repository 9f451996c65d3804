"""Which weights may be loaded: pickled checkpoints only when trusted, any file only with the hash its spec pins.

A pickled checkpoint (``.pt``, ``.pth``...; every file the ``ultralytics`` backend loads) runs code when it is
unpickled: loading one is running a program. So it is loaded only when

1. its real path (symlinks resolved) lies in a model folder (:func:`avala_infer.specs.weights_dirs`:
   ``$AVALA_INFER_MODELS`` and ``<user data>/avala-infer/models``), the folders its owner put weights in; or
2. it was added with ``avala-infer models add FILE`` (:func:`add_weights`: copied into the user model folder,
   its sha256 recorded in ``trusted.json`` there), or fetched by ``avala-infer models pull NAME`` (recorded the
   same way, with its URL as its source); or
3. the caller trusts it for this run: ``trust_weights=True`` (``Engine``, ``label``) or ``--trust-weights``.

Otherwise :class:`~avala_infer.errors.UntrustedWeightsError` is raised before a byte of it is unpickled.
Independently, a spec's ``sha256:`` pins the weights file (any format, ONNX too), and a file recorded in a
model folder's ``trusted.json`` must still have the hash recorded there: a mismatch is a
:class:`~avala_infer.errors.WeightsHashMismatchError`, and nothing is loaded. ONNX and safetensors hold no code
and need no trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from avala_infer.errors import ConfigError, ModelSpecError, UntrustedWeightsError, WeightsHashMismatchError
from avala_infer.specs import ModelSpec, weights_dirs

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt")
PICKLING_BACKENDS = frozenset({"ultralytics"})  # backends that unpickle whatever file they are given
REGISTRY_FILE = "trusted.json"
CHUNK_BYTES = 1 << 20


def sha256_of(path: str | os.PathLike) -> str:
    """The file's sha256 (hex), read in 1 MiB chunks (memory stays flat for any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def is_pickled(spec: ModelSpec, weights: Path) -> bool:
    """Whether loading ``weights`` for ``spec`` unpickles it (and so may run code it holds)."""
    return weights.is_file() and (weights.suffix.lower() in PICKLE_SUFFIXES or spec.backend in PICKLING_BACKENDS)


def trusted_folders() -> list[Path]:
    """The model folders, real paths: a pickle whose real path lies inside one of them is trusted."""
    return [folder.resolve() for folder in weights_dirs()]


def in_trusted_folder(weights: Path) -> bool:
    real = weights.resolve()
    return any(real.is_relative_to(folder) for folder in trusted_folders())


def read_registry(folder: Path) -> dict[str, dict]:
    """``{file name: {"sha256": ..., "source": ..., "added": ...}}`` from ``folder/trusted.json`` (empty if none)."""
    path = folder / REGISTRY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the weights registry {path}: {exc}; fix or delete it") from exc
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise ConfigError(f"weights registry {path} has no 'files' mapping; fix or delete it")
    return files


def recorded_sha256(weights: Path) -> str | None:
    """The sha256 recorded for ``weights`` by ``models add``, when it lies in a model folder's registry."""
    real = weights.resolve()
    if not real.is_file() or not any(real.parent == folder for folder in trusted_folders()):
        return None
    entry = read_registry(real.parent).get(real.name)
    return entry.get("sha256") if isinstance(entry, dict) else None


def untrusted_message(weights: Path) -> str:
    folders = ", ".join(str(f) for f in weights_dirs())
    return (
        f"refusing to load {weights}: it is a pickled checkpoint, and loading one runs any code it holds. "
        f"It is not in a model folder ({folders}). Trust it one of three ways: "
        f"(1) put it in a model folder (a folder named by AVALA_INFER_MODELS, or {weights_dirs()[-1]}); "
        f"(2) `avala-infer models add {weights}` (copies it into {weights_dirs()[-1]} and records its sha256); "
        "(3) for this run only: --trust-weights on the command line, trust_weights=True in Python. "
        "For weights from elsewhere prefer ONNX or safetensors, which hold no code."
    )


def check_weights(spec: ModelSpec, weights: Path, trust: bool = False) -> None:
    """Refuse ``weights`` before anything loads them: a hash other than the spec's ``sha256`` or the one
    ``models add`` recorded (:class:`WeightsHashMismatchError`), or a pickle that is not trusted
    (:class:`UntrustedWeightsError`; see the module docstring for the three ways to trust one)."""
    weights = Path(weights)
    actual = None
    if spec.sha256 is not None:
        if not weights.is_file():
            raise ModelSpecError(
                f"model {spec.name!r} pins sha256 but its weights {weights} are a folder; sha256 can pin a file only"
            )
        actual = sha256_of(weights)
        if actual != spec.sha256:
            where = f"model spec {spec.source}" if spec.source else f"the spec of model {spec.name!r}"
            raise WeightsHashMismatchError(
                f"refusing to load {weights}: its sha256 is {actual}, but {where} pins {spec.sha256}. Nothing was "
                "loaded. Put the right file there, or, if this file is the one you mean, set sha256 in the spec "
                "to what `sha256sum` prints for it"
            )
    recorded = recorded_sha256(weights)
    if recorded is not None:
        actual = actual or sha256_of(weights)
        if actual != recorded:
            raise WeightsHashMismatchError(
                f"refusing to load {weights}: its sha256 is {actual}, not the {recorded} recorded in "
                f"{weights.resolve().parent / REGISTRY_FILE} when it was added: the file changed since. Nothing was "
                f"loaded. Add the file you mean again with `avala-infer models add FILE --force`"
            )
    if not is_pickled(spec, weights) or in_trusted_folder(weights):
        return
    if trust:
        log.warning("loading pickled checkpoint %s from outside the model folders: trusted for this run", weights)
        return
    raise UntrustedWeightsError(untrusted_message(weights))


def add_weights(source: str | os.PathLike, *, force: bool = False) -> tuple[Path, str]:
    """Copy a weights file into the user model folder (``weights_dirs()[-1]``) and record its sha256 in
    ``trusted.json`` there; returns (the copy, its sha256). A different file of the same name is replaced only
    with ``force``."""
    source = Path(source).expanduser()
    if not source.is_file():
        raise ConfigError(f"no weights file at {source}: give the path of a .pt/.onnx/... file to add")
    folder = weights_dirs()[-1]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    digest = sha256_of(source)
    if target.exists() and target.resolve() != source.resolve() and sha256_of(target) != digest and not force:
        raise ConfigError(
            f"{target} exists and differs from {source}; pass --force to replace it, or rename the file to add"
        )
    if target.resolve() != source.resolve():
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{source.name}.", delete=False) as tmp:
            with open(source, "rb") as stream:
                shutil.copyfileobj(stream, tmp, CHUNK_BYTES)
        os.replace(tmp.name, target)
        if sha256_of(target) != digest:  # the source changed while it was copied
            target.unlink()
            raise ConfigError(f"{source} changed while it was being copied; add it again")
    record_trusted(target, digest, str(source.resolve()))
    return target, digest


def record_trusted(target: Path, digest: str, source: str) -> None:
    """Record ``target`` (a file in a model folder) with its sha256 and where it came from in ``trusted.json``
    beside it (written to a temporary file, then renamed): from then on a file of another hash is refused."""
    folder = target.parent
    files = read_registry(folder)
    files[target.name] = {
        "sha256": digest,
        "source": source,
        "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    registry = folder / REGISTRY_FILE
    tmp_registry = registry.with_name(f".{REGISTRY_FILE}.{os.getpid()}")
    tmp_registry.write_text(json.dumps({"files": files}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp_registry, registry)
