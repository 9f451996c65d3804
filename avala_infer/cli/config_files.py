"""The YAML configs the CLI takes (examples in ``configs/`` at the top of the repository):

- ``avala-infer projects create [NAME] --config project.yaml``: ``name``, ``data_type``, ``ontology`` (a list of
  labels, or ``{model_type: [labels]}``) and ``models`` (``{model_type: model}`` or ``{model_type: {model: ...,
  label_map: {from: to}}}``, as ``client.projects.create`` takes them);
- ``avala-infer auto-label create PROJECT --config job.yaml``: ``model_type``, ``confidence_threshold``,
  ``labels``, ``dry_run``, ``aggregation``, ``overwrite``, ``executor`` (as ``client.auto_label_jobs.create``
  takes them).

Options given on the command line override the file's values. A key the kind of config does not know, or a value
of the wrong type, is a :class:`~avala_infer.errors.ConfigError` naming it (and, for a key, the valid ones).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avala_infer.errors import ConfigError
from avala_infer.types import AGGREGATIONS


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _texts(value: Any) -> bool:
    return isinstance(value, list) and all(_text(v) for v in value)


def _ontology(value: Any) -> bool:
    return _texts(value) or (isinstance(value, dict) and all(_text(k) and _texts(v) for k, v in value.items()))


def _model_entry(value: Any) -> bool:
    if _text(value):
        return True
    if not isinstance(value, dict) or not _text(value.get("model")) or set(value) - {"model", "label_map"}:
        return False
    label_map = value.get("label_map", {})
    return isinstance(label_map, dict) and all(_text(k) and (v is None or _text(v)) for k, v in label_map.items())


def _models(value: Any) -> bool:
    return isinstance(value, dict) and all(_text(k) and _model_entry(v) for k, v in value.items())


def _flag(value: Any) -> bool:
    return isinstance(value, bool)


def _score(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


# kind -> key -> (check, what a valid value is)
_KEYS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "project": {
        "name": (_text, "a non-empty name"),
        "data_type": (lambda v: v in ("image", "text"), "image or text"),
        "ontology": (_ontology, "a list of label names, or {model_type: [label names]}"),
        "models": (_models, "{model_type: model} or {model_type: {model: name, label_map: {from: to or null}}}"),
    },
    "job": {
        "model_type": (_text, "a model type of the project, e.g. object_detection"),
        "confidence_threshold": (_score, "a number from 0 to 1"),
        "labels": (_texts, "a list of label names"),
        "dry_run": (_flag, "true or false"),
        "aggregation": (lambda v: v in AGGREGATIONS, ", ".join(AGGREGATIONS)),
        "overwrite": (_flag, "true or false"),
        "executor": (lambda v: v in ("local", "ray"), "local or ray"),
    },
}


def config_keys(kind: str) -> list[str]:
    """The keys a ``kind`` config (``project`` or ``job``) may hold."""
    return list(_KEYS[kind])


def load_config(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Read the ``kind`` (``project`` or ``job``) config at ``path``: its keys and values, checked. An empty file
    is an empty config."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the {kind} config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"the {kind} config {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the {kind} config {path} must be a mapping of keys to values, got {type(data).__name__}")
    keys = _KEYS[kind]
    for key, value in data.items():
        if key not in keys:
            raise ConfigError(f"unknown key {key!r} in the {kind} config {path}; valid keys: {', '.join(keys)}")
        check, valid = keys[key]
        if not check(value):
            raise ConfigError(f"{key} in the {kind} config {path} must be {valid}, got {value!r}")
    return dict(data)
