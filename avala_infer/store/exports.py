"""Exports of a project's results (``store.exports``): their rows and states; the files are the client's.

States: ``pending`` (queued by a process, whose ``holder`` id it records) -> ``exporting`` -> ``exported`` (with the
``file`` served, relative to the export's folder) or ``failed`` (with ``error_message``). An export whose holder is
gone (its process was killed, or the thread that held it stopped) never finishes: :meth:`ExportRepository.fail_orphans`
marks it failed, and whoever reads exports through the client calls it first.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avala_infer.errors import ConfigError
from avala_infer.store.base import Repository, new_uid, page, page_args
from avala_infer.store.db import now_iso, transaction
from avala_infer.store.events import EventRepository
from avala_infer.store.items import ItemRepository
from avala_infer.store.projects import ProjectRepository
from avala_infer.store.workers import holder_is_dead

EXPORT_STATUSES = ("pending", "exporting", "exported", "failed")
UNFINISHED = ("pending", "exporting")


def _public(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["formats"] = json.loads(row["formats"]) if isinstance(row["formats"], str) else row["formats"]
    row["project"] = row.pop("project_uid")
    row["dataset"] = row.pop("dataset_uid")
    return row


class ExportRepository(Repository):
    """``store.exports``: create (pending), start, finish, fail, get, list, and :meth:`fail_orphans`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: str | Path,
        *,
        events: EventRepository,
        projects: ProjectRepository,
        items: ItemRepository,
    ) -> None:
        super().__init__(conn, path)
        self.events = events
        self.projects = projects
        self.items = items

    def create(
        self, project_uid: str, formats: Sequence[str], *, holder: str, model_type: str | None = None
    ) -> dict[str, Any]:
        """A pending export of ``project_uid`` held by ``holder``; an unknown project is a NotFoundError."""
        formats = [str(f) for f in formats]
        if not formats:
            raise ConfigError("an export needs at least one format")
        self.projects.get(project_uid)
        dataset = self.items.project_dataset(project_uid)
        uid, now = new_uid("export"), now_iso()
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO exports (uid, project_uid, dataset_uid, formats, model_type, holder, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (uid, project_uid, dataset["uid"] if dataset else None, json.dumps(formats), model_type, holder,
                 now, now),
            )  # fmt: skip
        return self.get(uid)

    def get(self, uid: str) -> dict[str, Any]:
        return _public(self._one("exports", uid, "export", "`client.exports.list()` shows them"))

    def list(self, *, project: str | None = None, limit: int | None = None, cursor: str | None = None):
        """A page of exports, oldest first (of ``project`` only when given): (rows, next cursor or None)."""
        limit, after = page_args(limit, cursor)
        sql, args = "SELECT * FROM exports WHERE id > ?", [after]
        if project is not None:
            sql, args = sql + " AND project_uid = ?", [*args, project]
        rows, next_cursor = page(self.conn.execute(sql + " ORDER BY id LIMIT ?", (*args, limit + 1)).fetchall(), limit)
        return [_public(r) for r in rows], next_cursor

    def _set(
        self, uid: str, holder: str, sql: str, args: tuple, allowed: Sequence[str], event: str | None = None
    ) -> bool:
        """Apply ``sql`` when ``holder`` holds the export in one of the ``allowed`` states; with ``event``
        (export.completed / export.failed), emit it in the same transaction."""
        marks = ", ".join("?" for _ in allowed)
        with transaction(self.conn):
            changed = self.conn.execute(
                f"UPDATE exports SET {sql}, updated_at = ? WHERE uid = ? AND holder = ? AND status IN ({marks})",  # noqa: S608
                (*args, now_iso(), uid, holder, *allowed),
            ).rowcount
            if changed == 1 and event is not None:
                row = self.conn.execute(
                    "SELECT project_uid, dataset_uid, status, error_message FROM exports WHERE uid = ?", (uid,)
                ).fetchone()
                self.events.emit(
                    event,
                    project_uid=row["project_uid"],
                    data={"export": uid, "dataset": row["dataset_uid"], "status": row["status"],
                          "error": row["error_message"]},
                )  # fmt: skip
        return changed == 1

    def start(self, uid: str, holder: str) -> bool:
        """pending -> exporting; False when ``holder`` no longer holds it (it was failed as an orphan)."""
        return self._set(uid, holder, "status = 'exporting', started_at = ?", (now_iso(),), ("pending",))

    def finish(self, uid: str, holder: str, file: str) -> bool:
        """exporting -> exported, ``file`` (relative to the export's folder) being what is served."""
        return self._set(
            uid,
            holder,
            "status = 'exported', file = ?, completed_at = ?",
            (file, now_iso()),
            ("exporting",),
            event="export.completed",
        )

    def fail(self, uid: str, holder: str, error: str) -> bool:
        """pending/exporting -> failed with ``error``."""
        return self._set(uid, holder, "status = 'failed', error_message = ?, completed_at = ?", (error, now_iso()),
                         UNFINISHED, event="export.failed")  # fmt: skip

    def fail_orphans(self) -> list[str]:
        """Mark failed every unfinished export whose holder is gone (a process on this host that is no longer
        running, or a thread of this process that stopped); returns their uids. A plain read first: with no
        unfinished export, nothing is written."""
        rows = self.conn.execute("SELECT uid, holder FROM exports WHERE status IN ('pending', 'exporting')").fetchall()
        orphans = [(r["uid"], r["holder"]) for r in rows if holder_is_dead(r["holder"])]
        failed = []
        for uid, holder in orphans:
            pid = (holder or "?").split(":")[:2]
            error = (
                f"the process that ran this export ({':'.join(pid)}) stopped before it finished; "
                "create the export again"
            )
            if self.fail(uid, holder, error):
                failed.append(uid)
        return failed
