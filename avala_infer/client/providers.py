"""Inference providers (``client.inference_providers``), the cloud SDK's resource mapped onto our models: a
provider names a model of this host and the model type it serves.

``config``: ``{"model": NAME, "model_type": TYPE}``, ``NAME`` being a model name (``avala-infer models list``), a
spec ``.yaml`` or a weights file (``.pt``/``.onnx``, a path or a file name in the model folders), as a project's
models are named; ``model_type`` (one of our six) may be left out when the model's spec (or weights file name)
says it. Other config keys are kept as given. ``provider_type``: ``local`` (the default), or ``http`` (what the
Avala CLI offers: here it means the same, a model run by this host); ``sagemaker`` is refused.

A provider with a ``project`` (and active) makes that project serve its model for its model type, as
``client.projects.update(project, models={model_type: model})`` does, when it is created or changed: the project's
next jobs of that type use it. Deleting the provider, or deactivating it, leaves the project's model as it is.

``test(uid)`` loads the model through the same rules as a job (an untrusted pickle is refused before it is
read: see :mod:`avala_infer.trust`), predicts on one sample (the first item of the provider's project, else a
blank image or a short text), records ``last_test_at`` / ``last_test_success`` and answers ``{"success",
"message", ...}``: a model that cannot load is a failed test with a message saying why, not an error.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avala_infer.client.resources import _Resource
from avala_infer.client.types import CursorPage, _build
from avala_infer.errors import AvalaInferError, ConfigError, ModelSpecError, UnknownModelError

PROVIDER_TYPES = ("local", "http")  # http: the Avala CLI's choice, served here by the local model too
DEFAULT_PROVIDER_TYPE = "local"
SAMPLE_TEXT = "Avala checks this model on one short sentence written in Berlin by Ada Lovelace."
SAMPLE_SIZE = 320  # the blank test image, pixels a side
_UNSET: Any = object()


@dataclasses.dataclass
class InferenceProvider:
    """The SDK's ``InferenceProvider`` fields, and ``last_test_message`` (what the last test said)."""

    uid: str
    name: str
    description: str | None = None
    provider_type: str | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    is_active: bool = True
    project: str | None = None
    last_test_at: datetime.datetime | None = None
    last_test_success: bool | None = None
    last_test_message: str | None = None
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> InferenceProvider:
        provider = _build(cls, row)
        if isinstance(provider.last_test_at, str):
            provider.last_test_at = datetime.datetime.fromisoformat(provider.last_test_at)
        return provider

    @property
    def model(self) -> str:
        return str(self.config.get("model", ""))

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))


def check_provider_type(value: str | None) -> str:
    """``local`` for None; ``local`` or ``http`` as given; anything else a ConfigError saying what to send."""
    kind = DEFAULT_PROVIDER_TYPE if value is None else str(value).strip().lower()
    if kind in PROVIDER_TYPES:
        return kind
    raise ConfigError(
        f"provider_type {value!r} is not served here: avala-infer runs the provider's model on this host; use "
        f'provider_type {" or ".join(PROVIDER_TYPES)} with config {{"model": NAME, "model_type": TYPE}}'
    )


def _spec_or_none(model: str):
    from avala_infer.specs import find_spec

    try:
        return find_spec(model)
    except (UnknownModelError, ModelSpecError):
        return None


def check_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """``config`` with ``model`` checked and ``model_type`` filled in (from the model's spec, or a weights file's
    name) and parsed; a ConfigError says what is missing or wrong. The model's weights need not be present."""
    from avala_infer.specs import WEIGHT_BACKENDS, spec_from_weights
    from avala_infer.types import ModelType

    if not isinstance(config, Mapping):
        raise ConfigError('an inference provider\'s config must be an object: {"model": NAME, "model_type": TYPE}')
    model = config.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(
            f'an inference provider\'s config needs "model": a model name (`avala-infer models list`), a spec '
            f".yaml or a .pt/.onnx weights file; got keys {sorted(config) or 'none'}"
        )
    model = model.strip()
    try:
        spec = _spec_or_none(model)
    except (OSError, ValueError) as exc:  # a path the system cannot look up (too long, a NUL byte...)
        raise ConfigError(f"config.model {model[:200]!r} is not a usable model name or path: {exc}") from None
    given = config.get("model_type")
    if given is not None and not isinstance(given, str):
        raise ConfigError(f"config.model_type must be a string, one of {', '.join(m.value for m in ModelType)}")
    if given:
        model_type = ModelType.parse(given).value
        if spec is not None and spec.model_type.value != model_type:
            raise ConfigError(f"model {model!r} is a {spec.model_type.value} model, not {model_type}")
    elif spec is not None:
        model_type = spec.model_type.value
    elif Path(model).suffix.lower() in WEIGHT_BACKENDS:
        model_type = spec_from_weights(Path(model)).model_type.value
    else:
        raise ConfigError(
            f"unknown model {model!r}: give config.model_type ({', '.join(m.value for m in ModelType)}) or a "
            "model name from `avala-infer models list`"
        )
    return {**config, "model": model, "model_type": model_type}


def _missing_weights_message(model: str) -> str | None:
    """For a weights file name or path found nowhere: where it was looked for and where to put it."""
    from avala_infer.specs import WEIGHT_BACKENDS, weights_dirs

    path = Path(model).expanduser()
    if path.suffix.lower() not in WEIGHT_BACKENDS or path.is_file():
        return None
    if len(path.parts) == 1 and any((folder / path.name).is_file() for folder in weights_dirs()):
        return None
    folders = ", ".join(str(f) for f in weights_dirs())
    return (
        f"weights file {model!r} not found (no file at {path.resolve()}, nor in the model folders: {folders}). "
        f"Put it in a folder named by AVALA_INFER_MODELS (export AVALA_INFER_MODELS=/path/to/weights) or in "
        f"{weights_dirs()[-1]}, or give its full path"
    )


class InferenceProviders(_Resource):
    """``client.inference_providers``: create, get, list, update, delete, test."""

    def _link(self, provider: Mapping[str, Any]) -> None:
        """Make the provider's project (if any, and the provider active) serve its model for its model type."""
        project, config = provider.get("project"), provider.get("config") or {}
        if project and provider.get("is_active", True):
            self._client.projects.update(project, models={config["model_type"]: config["model"]})

    def create(
        self,
        *,
        name: str,
        config: Mapping[str, Any],
        provider_type: str | None = None,
        description: str | None = None,
        is_active: bool | None = None,
        project: str | None = None,
    ) -> InferenceProvider:
        """A provider of ``config["model"]`` (see the module's docstring); with ``project``, that project now
        serves the model for its type (an unknown model, or one the project's media cannot use, is refused)."""
        fields = {
            "name": name,
            "provider_type": check_provider_type(provider_type),
            "config": check_config(config),
            "description": description,
            "is_active": True if is_active is None else bool(is_active),
            "project": project,
        }
        if project is not None:
            self._call("projects.get", project)
        self._link(fields)
        return InferenceProvider.from_row(self._call("providers.create", **fields))

    def get(self, uid: str) -> InferenceProvider:
        return InferenceProvider.from_row(self._call("providers.get", uid))

    def list(self, *, limit: int | None = None, cursor: str | None = None) -> CursorPage[InferenceProvider]:
        return self._page(InferenceProvider, "providers.list", limit=limit, cursor=cursor)

    def update(
        self,
        uid: str,
        *,
        name: Any = _UNSET,
        description: Any = _UNSET,
        provider_type: Any = _UNSET,
        config: Any = _UNSET,
        is_active: Any = _UNSET,
        project: Any = _UNSET,
    ) -> InferenceProvider:
        """Change the fields given (``description=None`` or ``project=None`` clears them); a changed model,
        project or activation re-applies the project link."""
        current = self._call("providers.get", uid)
        changes: dict[str, Any] = {}
        if name is not _UNSET:
            changes["name"] = name
        if description is not _UNSET:
            changes["description"] = description
        if provider_type is not _UNSET:
            changes["provider_type"] = check_provider_type(provider_type)
        if config is not _UNSET:
            changes["config"] = check_config(config)
        if is_active is not _UNSET:
            changes["is_active"] = bool(is_active)
        if project is not _UNSET:
            if project is not None:
                self._call("projects.get", project)
            changes["project"] = project
        if {"config", "is_active", "project"} & set(changes):
            self._link({**current, **changes})
        return InferenceProvider.from_row(self._call("providers.update", uid, **changes))

    def delete(self, uid: str) -> None:
        """Delete the provider (its project keeps serving the model: change it with ``projects.update``)."""
        self._call("providers.delete", uid)

    def _sample(self, project: str | None, media: str) -> tuple[Any, str]:
        """(what to predict on, its description): the project's first item of ``media``, else a blank image or
        a short text."""
        import numpy as np

        from avala_infer.types import Text

        if project:
            data_type = self._call("projects.get", project)["data_type"]
            if data_type == media:
                with self._client._lock:
                    first = next(self._client._store.items.iter_task_items(project, chunk=1), None)
                if first is not None:
                    what = f"item {first['key']!r} of project {project}"
                    if first["path"] is None:
                        return Text(first["text"] or ""), what
                    return first["path"], what
        if media == "text":
            return Text(SAMPLE_TEXT), "a short text"
        blank = np.full((SAMPLE_SIZE, SAMPLE_SIZE, 3), 114, dtype=np.uint8)
        return blank, f"a blank {SAMPLE_SIZE}x{SAMPLE_SIZE} image"

    def test(self, uid: str) -> dict[str, Any]:
        """Load the provider's model (as a job would: trust rules included) and predict on one sample; records
        and returns ``{"success", "message", ...}``. A model that is missing, untrusted or broken is a failed
        test whose message says why and what to do."""
        provider = self.get(uid)
        model, model_type = provider.model, provider.model_type
        out: dict[str, Any] = {"provider": uid, "model": model, "model_type": model_type}
        try:
            out.update(self._try(provider))
            success = True
            out["message"] = (
                f"loaded {out['model_name']} ({out['backend']}) on {out['device']} in {out['load_seconds']:.2f}s and "
                f"predicted {out['annotations']} annotation(s) on {out['sample']} in {out['predict_ms']:.0f} ms"
            )
        except AvalaInferError as exc:
            success, out["message"] = False, f"model {model!r} failed its test: {exc}"
        except Exception as exc:  # a backend's own error while loading or predicting: a failed test, kept
            success, out["message"] = False, f"model {model!r} failed its test: {type(exc).__name__}: {exc}"
        recorded = InferenceProvider.from_row(self._call("providers.record_test", uid, success, out["message"]))
        out.update(success=success, last_test_at=recorded.last_test_at, last_test_success=success)
        return out

    def _try(self, provider: InferenceProvider) -> dict[str, Any]:
        from avala_infer.engine import Engine
        from avala_infer.errors import WeightsNotFoundError
        from avala_infer.types import ModelType

        missing = _missing_weights_message(provider.model)
        if missing:
            raise WeightsNotFoundError(missing)
        media = ModelType.parse(provider.model_type).media
        sample, what = self._sample(provider.project, media)
        started = time.perf_counter()
        engine = Engine(provider.model, device=self._client._device)
        try:
            if engine.model_type.value != provider.model_type:
                raise ConfigError(
                    f"model {provider.model!r} is a {engine.model_type.value} model, not {provider.model_type}"
                )
            loaded = time.perf_counter()
            prediction = next(iter(engine.predict([sample])))
            predicted = time.perf_counter()
        finally:
            engine.close()
        if not prediction.ok:
            raise AvalaInferError(f"predicting on {what} failed: {prediction.error}")
        names = [str(n) for n in getattr(prediction.result, "class_name", [])][:10] if len(prediction.result) else []
        return {
            "model_name": engine.spec.name,
            "backend": engine.spec.backend,
            "device": engine.device,
            "sample": what,
            "annotations": len(prediction.result),
            "labels": names,
            "load_seconds": round(loaded - started, 3),
            "predict_ms": round((predicted - loaded) * 1000, 1),
        }
