"""Projects (``store.projects``): name, data type, ontologies (a default and per model type), the model serving
each model type (with an optional label map), and the labels each model was last seen with."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from avala_infer.errors import ConfigError, NotFoundError
from avala_infer.store.base import Repository, new_uid, page, page_args
from avala_infer.store.db import now_iso, transaction
from avala_infer.store.events import EventRepository
from avala_infer.store.items import ItemRepository
from avala_infer.types import ModelType

DATA_TYPES = ("image", "text")


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{what} needs a name (a non-empty string), got {name!r}")
    return name


def _check_label_map(label_map: Any, where: str) -> dict[str, str | None]:
    """A label mapping as ``label --map`` takes it: model label -> project label (rename or merge), None or ""
    to drop."""
    if label_map is None:
        return {}
    if not isinstance(label_map, Mapping):
        raise ConfigError(f"{where} must map model labels to project labels, e.g. {{'person': 'pedestrian'}}, "
                          f"got {label_map!r}")  # fmt: skip
    checked: dict[str, str | None] = {}
    for source, target in label_map.items():
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(f"{where} has an empty model label; write model label -> project label")
        if target is not None and not isinstance(target, str):
            raise ConfigError(f"{where}[{source!r}] is {target!r}; give a label name, or None / '' to drop it")
        checked[source.strip()] = target.strip() or None if isinstance(target, str) else None
    return checked


def _check_models(models: Mapping[str, Any] | None, data_type: str) -> dict[str, Any]:
    """``{model_type: entry}`` as stored: the entry is the model (name, spec or weights path), or
    ``{"model": ..., "label_map": {...}}`` when it maps the model's labels to the project's."""
    if models is None:
        return {}
    if not isinstance(models, Mapping):
        raise ConfigError(
            f"models must map a model type to a model, e.g. {{'object_detection': 'yolo11n'}}, got {models!r}"
        )
    checked: dict[str, Any] = {}
    for model_type, entry in models.items():
        parsed = ModelType.parse(model_type)
        if parsed.media != data_type:
            raise ConfigError(f"a {data_type} project cannot use a {parsed.value} model (it reads {parsed.media})")
        model, label_map = entry, None
        if isinstance(entry, Mapping):
            unknown = sorted(set(entry) - {"model", "label_map"})
            if unknown:
                raise ConfigError(f"models[{model_type!r}] has unknown key(s) {unknown}; it takes model and label_map")
            model, label_map = entry.get("model"), entry.get("label_map")
        if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
            raise ConfigError(
                f"models[{model_type!r}] is {entry!r}; name a model, spec or weights path (avala-infer models list)"
            )
        label_map = _check_label_map(label_map, f"models[{model_type!r}]['label_map']")
        checked[parsed.value] = {"model": str(model), "label_map": label_map} if label_map else str(model)
    return checked


def split_models(stored: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, dict[str, str | None]]]:
    """Stored model entries -> (``{model_type: model}``, ``{model_type: label_map}`` for types with one)."""
    models, maps = {}, {}
    for model_type, entry in stored.items():
        if isinstance(entry, Mapping):
            models[model_type] = entry["model"]
            if entry.get("label_map"):
                maps[model_type] = dict(entry["label_map"])
        else:
            models[model_type] = entry
    return models, maps


def _label_names(labels: Iterable[str] | None, what: str) -> list[str]:
    """``labels`` as a list of stripped names; a string or a non-iterable is refused (not split into letters)."""
    if labels is None:
        return []
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
        raise ConfigError(f"{what} must be a list of label names, e.g. ['car', 'person'], got {labels!r}")
    return [str(n).strip() for n in labels]


def _check_ontology(ontology: Iterable[str] | None, what: str = "ontology") -> list[str]:
    names = _label_names(ontology, what)
    if any(not n for n in names):
        raise ConfigError("ontology labels must be non-empty names")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{what} lists {duplicates} more than once; each label once (its position is its id)")
    return names


def _check_ontologies(ontology: Any, data_type: str) -> tuple[list[str] | None, dict[str, list[str]]]:
    """``ontology`` as given: a list (every model type's, the default) or ``{model_type: labels}`` (those types'
    own lists). Returns (default or None when a mapping was given, own lists)."""
    if isinstance(ontology, Mapping):
        own = {}
        for model_type, labels in ontology.items():
            parsed = ModelType.parse(model_type)
            if parsed.media != data_type:
                raise ConfigError(f"a {data_type} project has no {parsed.value} ontology (it reads {parsed.media})")
            own[parsed.value] = _check_ontology(labels, f"ontology[{parsed.value!r}]")
        return None, own
    return _check_ontology(ontology), {}


def type_ontology(project: Mapping[str, Any], model_type: str) -> list[str]:
    """The labels of ``model_type``'s results in ``project``, in class-id order: the type's own list once a job
    of that type added labels (or one was set for it), else the project's default ontology."""
    own = project.get("type_ontologies") or {}
    return list(own[model_type]) if model_type in own else list(project.get("default_ontology") or [])


def _public_project(project: dict[str, Any]) -> dict[str, Any]:
    """A project row for callers: ``models`` as names, ``label_maps``, ``ontologies`` per model type (served or
    labeled) and ``ontology``, every type's labels in one list (the default's first; for a one-type project, the
    list its exports use)."""
    stored_models = project["models"]
    project["models"], project["label_maps"] = split_models(stored_models)
    project["default_ontology"] = list(project["ontology"])
    own = project.get("type_ontologies") or {}
    types = list(dict.fromkeys([*project["models"], *own]))
    project["ontologies"] = {t: type_ontology(project, t) for t in types}
    union = list(project["default_ontology"])
    for labels in project["ontologies"].values():
        union += [name for name in labels if name not in union]
    project["ontology"] = union
    return project


class ProjectRepository(Repository):
    """``store.projects``. Creating a project creates its dataset (the items' table) in the same transaction;
    changes emit ``project.updated``."""

    def __init__(
        self, conn: sqlite3.Connection, path: str | Path, *, events: EventRepository, items: ItemRepository
    ) -> None:
        super().__init__(conn, path)
        self.events = events
        self.items = items

    def create(
        self,
        name: str,
        *,
        data_type: str = "image",
        ontology: Iterable[str] | Mapping[str, Iterable[str]] | None = None,
        models: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A project with its dataset. ``ontology`` is a list (the default of every model type) or
        ``{model_type: labels}``; a ``models`` entry is a model or ``{"model": ..., "label_map": {...}}``."""
        _check_name(name, "a project")
        if data_type not in DATA_TYPES:
            raise ConfigError(f"data_type must be one of {', '.join(DATA_TYPES)}, got {data_type!r}")
        models = _check_models(models or {}, data_type)
        default, own = _check_ontologies(ontology, data_type)
        uid, now = new_uid("proj"), now_iso()
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO projects (uid, name, data_type, ontology, type_ontologies, models, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (uid, name, data_type, json.dumps(default or []), json.dumps(own), json.dumps(models), now, now),
            )
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "dataset"
            self.items.insert_dataset(name, f"{slug}-{uid[5:13]}", data_type, uid, now)
        return self.get(uid)

    def get(self, uid: str) -> dict[str, Any]:
        """The project as callers see it (see ``_public_project``), with ``task_count`` and its ``dataset``."""
        return self._with_counts(
            _public_project(self._one("projects", uid, "project", "`avala-infer projects list` shows them"))
        )

    def _with_counts(self, project: dict[str, Any]) -> dict[str, Any]:
        project["task_count"] = self.items.count_tasks(project["uid"])
        project["dataset"] = self.items.project_dataset(project["uid"])["uid"]
        return project

    def list(self, *, limit: int | None = None, cursor: str | None = None):
        """A page of projects, oldest first, each as :meth:`get` shows it: (rows, next cursor or None)."""
        limit, after = page_args(limit, cursor)
        rows = self.conn.execute("SELECT * FROM projects WHERE id > ? ORDER BY id LIMIT ?", (after, limit + 1))
        projects, next_cursor = page(rows.fetchall(), limit)
        return [self._with_counts(_public_project(p)) for p in projects], next_cursor

    def update(
        self, uid: str, *, name: str | None = None, ontology=None, models: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """``ontology``: a list replaces every model type's ontology; ``{model_type: labels}`` sets those types'.
        ``models``: the entries given replace those of their model types (others keep theirs)."""
        row = self._one("projects", uid, "project", "`avala-infer projects list` shows them")
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = _check_name(name, "a project")
        if ontology is not None:
            default, own = _check_ontologies(ontology, row["data_type"])
            if default is not None:
                changes["ontology"], changes["type_ontologies"] = json.dumps(default), "{}"
            else:
                changes["type_ontologies"] = json.dumps({**row["type_ontologies"], **own})
        if models is not None:
            merged = {**row["models"], **_check_models(models, row["data_type"])}
            changes["models"] = json.dumps(merged)
        if changes:
            sets = ", ".join(f"{k} = ?" for k in changes)
            with transaction(self.conn):
                self.conn.execute(
                    f"UPDATE projects SET {sets}, updated_at = ? WHERE uid = ?",  # noqa: S608
                    (*changes.values(), now_iso(), uid),
                )
                changed = sorted({"ontology" if key == "type_ontologies" else key for key in changes})
                self.events.emit("project.updated", project_uid=uid, data={"changed": changed})
        return self.get(uid)

    def extend_ontology(self, uid: str, labels: Iterable[str], model_type: str | None = None) -> list[str]:
        """Append the labels the ontology lacks (ids of existing labels never change); returns the ontology.

        With ``model_type``, that type's ontology (its own list from now on, when labels are added); without,
        the default and every type's own list."""
        names = _label_names(labels, "labels")
        if any(not name for name in names):
            raise ConfigError(f"labels must be non-empty names, got {list(labels)!r}")
        with transaction(self.conn):
            row = self.conn.execute("SELECT ontology, type_ontologies FROM projects WHERE uid = ?", (uid,)).fetchone()
            if row is None:
                raise NotFoundError(f"no project {uid!r} in the store at {self.path}; `avala-infer projects list`")
            project = {"default_ontology": json.loads(row["ontology"]),
                       "type_ontologies": json.loads(row["type_ontologies"])}  # fmt: skip
            lists = {model_type: type_ontology(project, model_type)} if model_type else {
                None: project["default_ontology"], **project["type_ontologies"]}  # fmt: skip
            added_any: list[str] = []
            for key, ontology in lists.items():
                added = [name for name in dict.fromkeys(names) if name not in ontology]
                if not added:
                    continue
                added_any += [name for name in added if name not in added_any]
                if key is None:
                    project["default_ontology"] = ontology + added
                else:
                    project["type_ontologies"][key] = ontology + added
            if added_any:
                self.conn.execute(
                    "UPDATE projects SET ontology = ?, type_ontologies = ?, updated_at = ? WHERE uid = ?",
                    (json.dumps(project["default_ontology"]), json.dumps(project["type_ontologies"]), now_iso(), uid),
                )
                self.events.emit("project.updated", project_uid=uid, data={"changed": ["ontology"], "added": added_any})
        return type_ontology(project, model_type) if model_type else project["default_ontology"]

    def model_labels(self, model: str) -> list[str] | None:
        """``model``'s labels as a job last saw them when it loaded the model, or None (never loaded here)."""
        row = self.conn.execute("SELECT labels FROM model_labels WHERE model = ?", (model,)).fetchone()
        return None if row is None else json.loads(row["labels"])

    def record_model_labels(self, model: str, labels: Iterable[str]) -> None:
        """Remember ``model``'s labels as a job just loaded it (for the label checks of jobs created later)."""
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO model_labels (model, labels, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (model) DO UPDATE SET labels = excluded.labels, updated_at = excluded.updated_at",
                (model, json.dumps([str(x) for x in labels]), now_iso()),
            )
