"""Results: the automatic drafts jobs write, one per task and job, and their review (``store.results``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from avala_infer.errors import NotFoundError
from avala_infer.store.base import Repository, row_dict
from avala_infer.store.db import transaction
from avala_infer.store.events import EventRepository
from avala_infer.store.items import ItemRepository
from avala_infer.types import ModelType


class ResultRepository(Repository):
    """``store.results``: written by a job's batch (:meth:`insert_draft`, inside its transaction), read back in
    chunks for exports, accepted or rejected by people."""

    def __init__(
        self, conn: sqlite3.Connection, path: str | Path, *, events: EventRepository, items: ItemRepository
    ) -> None:
        super().__init__(conn, path)
        self.events = events
        self.items = items

    def insert_draft(
        self,
        job: dict[str, Any],
        task_uid: str,
        result_uid: str,
        annotations: Any,
        label_counts: dict[str, int],
        now: str,
    ) -> bool:
        """Inside the caller's transaction (a job's batch): the job's draft result for the task, and its
        ``result.submitted`` event. Returns False (and emits nothing) when the uid is taken."""
        added = self.conn.execute(
            "INSERT OR IGNORE INTO results (uid, task_uid, job_uid, model, model_type, annotations, "
            "settings_hash, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (result_uid, task_uid, job["uid"], job["model"], job["model_type"], json.dumps(annotations),
             job.get("settings_hash"), now),
        ).rowcount  # fmt: skip
        if added:
            self.events.emit("result.submitted", project_uid=job["project_uid"], task_uid=task_uid,
                             task_types=[job["model_type"]],
                             data={"result": result_uid, "job": job["uid"], "model": job["model"], "is_draft": True,
                                   "label_counts": label_counts})  # fmt: skip
        return bool(added)

    def iter_latest(
        self,
        project_uid: str,
        model_type: str,
        *,
        model: str | None = None,
        job: str | None = None,
        chunk: int = 256,
    ) -> Iterator[dict[str, Any]]:
        """One result per task, in task order: the one kept by the newest real job of ``model_type`` (optionally
        of ``model``) that holds a result for the task; with ``job``, that job's (made or kept). Tasks without
        one are left out. Read in chunks."""
        where, args = "j.model_type = ? AND j.dry_run = 0", [ModelType.parse(model_type).value]
        if model is not None:
            where += " AND j.model = ?"
            args.append(model)
        if job is not None:
            where += " AND j.uid = ?"
            args.append(job)
        after = 0
        while True:
            rows = self.conn.execute(
                "SELECT t.id AS task_id, r.id, r.uid, r.task_uid, r.job_uid, r.model, r.model_type, r.annotations, "
                "r.is_draft, i.key, i.path, i.text FROM tasks t JOIN items i ON i.uid = t.item_uid "
                "JOIN results r ON r.uid = (SELECT jt.result_uid FROM job_tasks jt JOIN jobs j ON j.uid = jt.job_uid "
                f"WHERE jt.task_uid = t.uid AND jt.result_uid IS NOT NULL AND {where} ORDER BY j.id DESC LIMIT 1) "
                "WHERE t.project_uid = ? AND t.id > ? ORDER BY t.id LIMIT ?",
                (*args, project_uid, after, chunk),
            ).fetchall()
            if not rows:
                return
            yield from (row_dict(r) for r in rows)
            after = rows[-1]["task_id"]

    def for_task(self, task_uid: str) -> list[dict[str, Any]]:
        """The task's results, oldest first."""
        self.items.get_task(task_uid)  # an unknown uid is an error, not an empty list
        rows = self.conn.execute("SELECT * FROM results WHERE task_uid = ? ORDER BY id", (task_uid,)).fetchall()
        return [row_dict(r) for r in rows]

    def review(self, result_uid: str, accept: bool, reason: str | None = None) -> dict[str, Any]:
        """Accept (no longer a draft) or reject an automatic result; emits result.accepted / result.rejected."""
        with transaction(self.conn):
            row = self.conn.execute(
                "SELECT r.*, t.project_uid FROM results r JOIN tasks t ON t.uid = r.task_uid WHERE r.uid = ?",
                (result_uid,),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no result {result_uid!r}; client.tasks.results(task_uid) lists a task's")
            if accept:
                self.conn.execute("UPDATE results SET is_draft = 0 WHERE uid = ?", (result_uid,))
            else:
                self.conn.execute("DELETE FROM results WHERE uid = ?", (result_uid,))
            self.events.emit("result.accepted" if accept else "result.rejected", project_uid=row["project_uid"],
                             task_uid=row["task_uid"], task_types=[row["model_type"]],
                             data={"result": result_uid, "model": row["model"], "reason": reason})  # fmt: skip
        return {"uid": result_uid, "accepted": accept}
