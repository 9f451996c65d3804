"""Datasets, their items and the tasks (one per item) that jobs label and people review (``store.items``).

Importing is deduplicated here: an item already in the dataset with the same content and path is not added again,
and a file's hash is remembered with its size and mtime so an unchanged file is not read twice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from avala_infer.errors import ConfigError, NotFoundError
from avala_infer.store.base import Repository, new_uid, page, page_args, row_dict
from avala_infer.store.db import now_iso, transaction
from avala_infer.store.events import EventRepository

TASK_STATUSES = ("pending", "labeled", "completed", "reviewed", "rejected")
IMPORT_CHUNK = 500  # items per transaction while importing


class ItemRepository(Repository):
    """``store.items``: datasets, items (import with dedup by key, content hash and path) and tasks; adding items
    emits ``task.created`` and ``dataset.updated``, a status change ``task.<status>``."""

    def __init__(self, conn: sqlite3.Connection, path: str | Path, *, events: EventRepository) -> None:
        super().__init__(conn, path)
        self.events = events

    # ------------------------------------------------------------------ datasets and items
    def insert_dataset(self, name: str, slug: str, data_type: str, project_uid: str, now: str) -> str:
        """Inside the caller's transaction (the project's creation): the project's dataset; returns its uid."""
        uid = new_uid("ds")
        self.conn.execute(
            "INSERT INTO datasets (uid, name, slug, data_type, project_uid, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (uid, name, slug, data_type, project_uid, now, now),
        )
        return uid

    def project_dataset(self, project_uid: str) -> dict[str, Any] | None:
        """The project's dataset (the first, the one its creation made); None for an unknown project."""
        row = self.conn.execute(
            "SELECT * FROM datasets WHERE project_uid = ? ORDER BY id LIMIT 1", (project_uid,)
        ).fetchone()
        return row_dict(row)

    def get_dataset(self, uid: str) -> dict[str, Any]:
        """The dataset with its ``item_count``; an unknown uid is a NotFoundError."""
        dataset = self._one("datasets", uid, "dataset", "`client.datasets.list()` shows them")
        dataset["item_count"] = self.conn.execute(
            "SELECT COUNT(*) FROM items WHERE dataset_uid = ?", (uid,)
        ).fetchone()[0]
        return dataset

    def get_dataset_by_slug(self, slug: str) -> dict[str, Any]:
        """The dataset whose ``slug`` this is, with its ``item_count``; an unknown slug is a NotFoundError."""
        row = self.conn.execute("SELECT uid FROM datasets WHERE slug = ?", (slug,)).fetchone()
        if row is None:
            raise NotFoundError(
                f"no dataset with slug {slug!r} in the store at {self.path}; `datasets.list()` shows them"
            )
        return self.get_dataset(row["uid"])

    def get_item(self, uid: str) -> dict[str, Any]:
        """The item row (``id``, ``dataset_uid``, ``key``, ``path``...); an unknown uid is a NotFoundError."""
        return self._one("items", uid, "item", "`client.datasets.list_items(DATASET)` shows them")

    def list_datasets(self, *, limit: int | None = None, cursor: str | None = None):
        """A page of datasets, oldest first, each with its ``item_count``: (rows, next cursor or None)."""
        limit, after = page_args(limit, cursor)
        rows = self.conn.execute(
            "SELECT d.*, (SELECT COUNT(*) FROM items WHERE dataset_uid = d.uid) AS item_count "
            "FROM datasets AS d WHERE d.id > ? ORDER BY d.id LIMIT ?",
            (after, limit + 1),
        )
        return page(rows.fetchall(), limit)

    def list(self, dataset_uid: str, *, limit: int | None = None, cursor: str | None = None):
        """A page of the dataset's items, oldest first: (rows, next cursor or None)."""
        limit, after = page_args(limit, cursor)
        self._one("datasets", dataset_uid, "dataset", "`client.datasets.list()` shows them")
        rows = self.conn.execute(
            "SELECT * FROM items WHERE dataset_uid = ? AND id > ? ORDER BY id LIMIT ?", (dataset_uid, after, limit + 1)
        )
        return page(rows.fetchall(), limit)

    def add(self, project_uid: str, items: Iterable[dict[str, Any]]) -> dict[str, int]:
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
                    self.events.emit("task.created", project_uid=project_uid, task_uid=task_uid,
                         data={"item": item_uid, "key": key})  # fmt: skip
                    counts["created"] += 1
                if counts["created"] > created_before:
                    added = counts["created"] - created_before
                    data = {"dataset": dataset["uid"], "items_added": added}
                    self.events.emit("dataset.updated", project_uid=project_uid, data=data)
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
        """The task row; an unknown uid is a NotFoundError."""
        return self._one("tasks", uid, "task", "`avala-infer tasks list PROJECT` shows them")

    def list_tasks(
        self,
        *,
        project: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ):
        """A page of tasks (of ``project``, with ``status``, when given), oldest first: (rows, next cursor)."""
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
        """How many tasks (one per item) the project has."""
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

    def mark_labeled(self, task_uid: str, now: str) -> None:
        """Inside the caller's transaction (a job's batch): a pending task now holds an automatic result."""
        self.conn.execute(
            "UPDATE tasks SET status = 'labeled', updated_at = ? WHERE uid = ? AND status = 'pending'", (now, task_uid)
        )

    def apply_task_status(self, task_uid: str, status: str, reason: str | None = None) -> None:
        """Inside the caller's transaction: change a task's status and emit its event."""
        task = self.conn.execute("SELECT project_uid FROM tasks WHERE uid = ?", (task_uid,)).fetchone()
        if task is None:
            raise NotFoundError(f"no task {task_uid!r}; `avala-infer tasks list PROJECT` shows them")
        self.conn.execute("UPDATE tasks SET status = ?, updated_at = ? WHERE uid = ?", (status, now_iso(), task_uid))
        self.events.emit(f"task.{status}", project_uid=task["project_uid"], task_uid=task_uid,
                         data={"status": status, "reason": reason})  # fmt: skip

    def set_task_status(self, task_uid: str, status: str, reason: str | None = None) -> dict[str, Any]:
        """``completed`` (a person finished it), ``reviewed`` (passed review) or ``rejected``."""
        if status not in ("completed", "reviewed", "rejected"):
            raise ConfigError(f"a task can be completed, reviewed or rejected, not {status!r}")
        with transaction(self.conn):
            self.apply_task_status(task_uid, status, reason)
        return self.get_task(task_uid)
