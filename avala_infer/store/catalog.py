"""Projects, their datasets and items, and the tasks (one per item) that jobs label."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from avala_infer.errors import ConfigError, NotFoundError
from avala_infer.store.base import StoreBase, new_uid, page, page_args, row_dict
from avala_infer.store.db import now_iso, transaction
from avala_infer.store.events import emit
from avala_infer.types import ModelType

DATA_TYPES = ("image", "text")
TASK_STATUSES = ("pending", "labeled", "completed", "reviewed", "rejected")
IMPORT_CHUNK = 500  # items per transaction while importing


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{what} needs a name (a non-empty string), got {name!r}")
    return name


def _check_models(models: Mapping[str, str] | None, data_type: str) -> dict[str, str]:
    if models is None:
        return {}
    if not isinstance(models, Mapping):
        raise ConfigError(
            f"models must map a model type to a model, e.g. {{'object_detection': 'yolo11n'}}, got {models!r}"
        )
    checked = {}
    for model_type, model in models.items():
        parsed = ModelType.parse(model_type)
        if parsed.media != data_type:
            raise ConfigError(f"a {data_type} project cannot use a {parsed.value} model (it reads {parsed.media})")
        if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
            raise ConfigError(
                f"models[{model_type!r}] is {model!r}; name a model, spec or weights path (avala-infer models list)"
            )
        checked[parsed.value] = str(model)
    return checked


def _label_names(labels: Iterable[str] | None, what: str) -> list[str]:
    """``labels`` as a list of stripped names; a string or a non-iterable is refused (not split into letters)."""
    if labels is None:
        return []
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
        raise ConfigError(f"{what} must be a list of label names, e.g. ['car', 'person'], got {labels!r}")
    return [str(n).strip() for n in labels]


def _check_ontology(ontology: Iterable[str] | None) -> list[str]:
    names = _label_names(ontology, "ontology")
    if any(not n for n in names):
        raise ConfigError("ontology labels must be non-empty names")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"ontology lists {duplicates} more than once; each label once (its position is its id)")
    return names


class CatalogStore(StoreBase):
    # ------------------------------------------------------------------ projects
    def create_project(
        self,
        name: str,
        *,
        data_type: str = "image",
        ontology: Iterable[str] | None = None,
        models: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        _check_name(name, "a project")
        if data_type not in DATA_TYPES:
            raise ConfigError(f"data_type must be one of {', '.join(DATA_TYPES)}, got {data_type!r}")
        models = _check_models(models or {}, data_type)
        labels = _check_ontology(ontology)
        uid, now = new_uid("proj"), now_iso()
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO projects (uid, name, data_type, ontology, models, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (uid, name, data_type, json.dumps(labels), json.dumps(models), now, now),
            )
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "dataset"
            self.conn.execute(
                "INSERT INTO datasets (uid, name, slug, data_type, project_uid, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (new_uid("ds"), name, f"{slug}-{uid[5:13]}", data_type, uid, now, now),
            )
        return self.get_project(uid)

    def get_project(self, uid: str) -> dict[str, Any]:
        project = self._one("projects", uid, "project", "`avala-infer projects list` shows them")
        counts = self.conn.execute(
            "SELECT COUNT(*) AS n, SUM(status != 'pending') AS labeled FROM tasks WHERE project_uid = ?", (uid,)
        ).fetchone()
        project["task_count"] = counts["n"]
        project["dataset"] = self.project_dataset(uid)["uid"]
        return project

    def list_projects(self, *, limit: int | None = None, cursor: str | None = None):
        limit, after = page_args(limit, cursor)
        rows = self.conn.execute("SELECT * FROM projects WHERE id > ? ORDER BY id LIMIT ?", (after, limit + 1))
        return page(rows.fetchall(), limit)

    def update_project(
        self, uid: str, *, name: str | None = None, ontology=None, models: dict[str, str] | None = None
    ) -> dict[str, Any]:
        project = self.get_project(uid)
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = _check_name(name, "a project")
        if ontology is not None:
            changes["ontology"] = json.dumps(_check_ontology(ontology))
        if models is not None:
            merged = {**project["models"], **_check_models(models, project["data_type"])}
            changes["models"] = json.dumps(merged)
        if changes:
            sets = ", ".join(f"{k} = ?" for k in changes)
            with transaction(self.conn):
                self.conn.execute(
                    f"UPDATE projects SET {sets}, updated_at = ? WHERE uid = ?",  # noqa: S608
                    (*changes.values(), now_iso(), uid),
                )
                emit(self.conn, "project.updated", project_uid=uid, data={"changed": sorted(changes)})
        return self.get_project(uid)

    def extend_ontology(self, uid: str, labels: Iterable[str]) -> list[str]:
        """Append the labels the ontology lacks (ids of existing labels never change); returns the ontology."""
        names = _label_names(labels, "labels")
        if any(not name for name in names):
            raise ConfigError(f"labels must be non-empty names, got {list(labels)!r}")
        with transaction(self.conn):
            row = self.conn.execute("SELECT ontology FROM projects WHERE uid = ?", (uid,)).fetchone()
            if row is None:
                raise NotFoundError(f"no project {uid!r} in the store at {self.path}; `avala-infer projects list`")
            ontology = json.loads(row["ontology"])
            added = [name for name in dict.fromkeys(names) if name not in ontology]
            if added:
                ontology += added
                self.conn.execute(
                    "UPDATE projects SET ontology = ?, updated_at = ? WHERE uid = ?",
                    (json.dumps(ontology), now_iso(), uid),
                )
                emit(self.conn, "project.updated", project_uid=uid, data={"changed": ["ontology"], "added": added})
        return ontology

    # ------------------------------------------------------------------ datasets and items
    def project_dataset(self, project_uid: str) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT * FROM datasets WHERE project_uid = ? ORDER BY id LIMIT 1", (project_uid,)
        ).fetchone()
        return row_dict(row)

    def get_dataset(self, uid: str) -> dict[str, Any]:
        dataset = self._one("datasets", uid, "dataset", "`client.datasets.list()` shows them")
        dataset["item_count"] = self.conn.execute(
            "SELECT COUNT(*) FROM items WHERE dataset_uid = ?", (uid,)
        ).fetchone()[0]
        return dataset

    def list_datasets(self, *, limit: int | None = None, cursor: str | None = None):
        limit, after = page_args(limit, cursor)
        rows = self.conn.execute("SELECT * FROM datasets WHERE id > ? ORDER BY id LIMIT ?", (after, limit + 1))
        return page(rows.fetchall(), limit)

    def list_items(self, dataset_uid: str, *, limit: int | None = None, cursor: str | None = None):
        limit, after = page_args(limit, cursor)
        self._one("datasets", dataset_uid, "dataset", "`client.datasets.list()` shows them")
        rows = self.conn.execute(
            "SELECT * FROM items WHERE dataset_uid = ? AND id > ? ORDER BY id LIMIT ?", (dataset_uid, after, limit + 1)
        )
        return page(rows.fetchall(), limit)

    def add_items(self, project_uid: str, items: Iterable[dict[str, Any]]) -> dict[str, int]:
        """Add items (key, path, text, size, content_hash, and for files mtime_ns) to the project's dataset with a
        task each, in chunks of one transaction. An item whose key is there with the same content is left as it is
        (importing twice adds nothing; its recorded mtime is brought up to date); a different item under a taken
        key gets the key with ``_1``, ``_2``... Returns counts."""
        dataset = self.project_dataset(project_uid)
        counts = {"created": 0, "existing": 0}
        chunk: list[dict[str, Any]] = []

        def flush() -> None:
            now = now_iso()
            created_before = counts["created"]
            with transaction(self.conn):
                for item in chunk:
                    item_uid = new_uid("item")
                    key = self._free_key(dataset["uid"], item)
                    if key is None:
                        counts["existing"] += 1
                        continue
                    self.conn.execute(
                        "INSERT INTO items (uid, dataset_uid, key, path, text, size, content_hash, mtime_ns, "
                        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (item_uid, dataset["uid"], key, item.get("path"), item.get("text"), item["size"],
                         item["content_hash"], item.get("mtime_ns"), now),
                    )  # fmt: skip
                    task_uid = new_uid("task")
                    self.conn.execute(
                        "INSERT INTO tasks (uid, project_uid, item_uid, type, name, status, created_at, updated_at) "
                        "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                        (task_uid, project_uid, item_uid, dataset["data_type"], key, now, now),
                    )
                    emit(self.conn, "task.created", project_uid=project_uid, task_uid=task_uid,
                         data={"item": item_uid, "key": key})  # fmt: skip
                    counts["created"] += 1
                if counts["created"] > created_before:
                    added = counts["created"] - created_before
                    data = {"dataset": dataset["uid"], "items_added": added}
                    emit(self.conn, "dataset.updated", project_uid=project_uid, data=data)
            chunk.clear()

        for item in items:
            chunk.append(item)
            if len(chunk) >= IMPORT_CHUNK:
                flush()
        if chunk:
            flush()
        return counts

    def _free_key(self, dataset_uid: str, item: dict[str, Any]) -> str | None:
        """``item``'s key, or the first free ``stem_N.suffix``; None when the same item is there already."""
        key, n = item["key"], 0
        while True:
            row = self.conn.execute(
                "SELECT id, path, content_hash, mtime_ns FROM items WHERE dataset_uid = ? AND key = ?",
                (dataset_uid, key),
            ).fetchone()
            if row is None:
                return key
            if row["content_hash"] == item["content_hash"] and row["path"] == item.get("path"):
                if item.get("mtime_ns") is not None and row["mtime_ns"] != item["mtime_ns"]:
                    self.conn.execute("UPDATE items SET mtime_ns = ? WHERE id = ?", (item["mtime_ns"], row["id"]))
                return None
            n += 1
            stem, dot, suffix = item["key"].rpartition(".")
            key = f"{stem}_{n}.{suffix}" if dot and "/" not in suffix else f"{item['key']}_{n}"

    def known_file_hash(self, dataset_uid: str, path: str, size: int, mtime_ns: int) -> str | None:
        """The content hash recorded for the file at ``path`` in the dataset when it had this size and mtime, else
        None (a new file, or one changed since: then it is hashed again)."""
        row = self.conn.execute(
            "SELECT content_hash FROM items WHERE dataset_uid = ? AND path = ? AND size = ? AND mtime_ns = ? "
            "ORDER BY id DESC LIMIT 1",
            (dataset_uid, path, size, mtime_ns),
        ).fetchone()
        return None if row is None else row["content_hash"]

    # ------------------------------------------------------------------ tasks
    def get_task(self, uid: str) -> dict[str, Any]:
        return self._one("tasks", uid, "task", "`avala-infer tasks list PROJECT` shows them")

    def list_tasks(
        self,
        *,
        project: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ):
        if status is not None and status not in TASK_STATUSES:
            raise ConfigError(f"task status must be one of {', '.join(TASK_STATUSES)}, got {status!r}")
        limit, after = page_args(limit, cursor)
        sql = "SELECT * FROM tasks WHERE id > ?"
        args: list[Any] = [after]
        if project is not None:
            sql += " AND project_uid = ?"
            args.append(project)
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        rows = self.conn.execute(sql + " ORDER BY id LIMIT ?", (*args, limit + 1))
        return page(rows.fetchall(), limit)

    def count_tasks(self, project_uid: str) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM tasks WHERE project_uid = ?", (project_uid,)).fetchone()[0]

    def iter_task_items(self, project_uid: str, chunk: int = 256) -> Iterator[dict[str, Any]]:
        """Every task of the project with its item's key, path and text, in task order, read in chunks (no read
        statement stays open across the caller's writes)."""
        after = 0
        while True:
            rows = self.conn.execute(
                "SELECT t.id, t.uid AS task_uid, t.status, i.key, i.path, i.text FROM tasks t "
                "JOIN items i ON i.uid = t.item_uid WHERE t.project_uid = ? AND t.id > ? ORDER BY t.id LIMIT ?",
                (project_uid, after, chunk),
            ).fetchall()
            if not rows:
                return
            yield from (dict(r) for r in rows)
            after = rows[-1]["id"]
