"""The event outbox and its push deliveries (``store.events``).

``emit`` runs inside the transaction of the change that causes the event, writing the event and one delivery per
matching agent, so a crash can lose neither the change's event nor its deliveries. An agent matches when it is
active, lists the event type, has no project or the event's project, and has no task types or one of the event's
(the model types the event concerns: a job's, or the project's).

Delivery states: ``pending`` (due at ``next_attempt_at``) -> ``running`` (held by a dispatcher or a pull consumer
until ``lease_until``; an expired lease makes it due again, with the same delivery uid) -> ``succeeded`` or
``failed`` (attempts used up, or a response that retrying cannot fix). The dispatcher's side (claim, record an
attempt) is here; the pull consumer's side is the agents'.

A payload carries our names (``event``, ``project``, ``task``, ``task_types``, ``data``) and the Avala SDK's, which
``avala-agents`` reads (``event_type``, ``project_uid``, ``task_uid``, ``task_name``, ``task_type``, ``task_status``;
``result_uid``, ``result_data``, ``result_metadata`` for result events; ``dataset_uid`` for dataset events;
``export_uid`` for export events).
``task_type`` is the model type the event concerns when there is exactly one (``task_types`` lists them all).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from typing import Any

from avala_infer.store.base import Repository, new_uid
from avala_infer.store.db import now_iso, transaction

EVENT_TYPES = (
    "task.created",
    "task.completed",
    "task.reviewed",
    "task.rejected",
    "project.updated",
    "dataset.updated",
    "auto_label.completed",
    "auto_label.failed",
    "result.submitted",
    "result.accepted",
    "result.rejected",
    # avala-agents' other events: an agent may listen to them (a TaskAgent registers every event it has a handler
    # for), but the local store does not emit them (it has no dataset without its project, and no export events)
    "dataset.created",
    "dataset.deleted",
    "export.completed",
    "export.failed",
)
TEST_EVENT = "agent.test"


def project_task_types(conn: sqlite3.Connection, project_uid: str | None) -> list[str]:
    """The model types ``project_uid`` serves (sorted), the task types of its events; [] for no project."""
    if project_uid is None:
        return []
    row = conn.execute("SELECT models FROM projects WHERE uid = ?", (project_uid,)).fetchone()
    return sorted(json.loads(row["models"])) if row else []


def sdk_payload_fields(
    conn: sqlite3.Connection,
    event_type: str,
    project_uid: str | None,
    task_uid: str | None,
    task_types: list[str],
    data: dict[str, Any],
) -> dict[str, Any]:
    """The Avala SDK's names of an event's payload (see the module docstring), read from the store as it is now
    (inside the transaction of the event's cause: the task's new status, the result just written)."""
    fields: dict[str, Any] = {
        "event_type": event_type,
        "project_uid": project_uid,
        "task_uid": task_uid,
        "task_name": None,
        "task_type": task_types[0] if len(task_types) == 1 else None,
        "task_status": None,
    }
    if task_uid is not None:
        task = conn.execute("SELECT name, status FROM tasks WHERE uid = ?", (task_uid,)).fetchone()
        if task is not None:
            fields.update(task_name=task["name"], task_status=task["status"])
    if event_type.startswith("result.") and data.get("result"):
        fields.update(_result_fields(conn, str(data["result"]), data))
    if data.get("dataset"):
        fields["dataset_uid"] = data["dataset"]
    if data.get("export"):
        fields["export_uid"] = data["export"]
    return fields


def _result_fields(conn: sqlite3.Connection, result_uid: str, data: dict[str, Any]) -> dict[str, Any]:
    """``result_uid``, ``result_data`` (the result's annotations; [] once it is deleted, as a rejected one is) and
    ``result_metadata`` (its model and job, whether it is a draft, its image size, its label counts)."""
    row = conn.execute(
        "SELECT job_uid, model, is_draft, annotations FROM results WHERE uid = ?", (result_uid,)
    ).fetchone()
    metadata = {k: data[k] for k in ("job", "model", "is_draft", "label_counts") if k in data}
    annotations: list[Any] = []
    if row is not None:
        record = json.loads(row["annotations"]) or {}
        if not isinstance(record, dict):
            record = {"annotations": record}
        annotations = list(record.get("annotations") or [])
        extra = {k: record[k] for k in ("width", "height", "multi_label") if k in record}
        metadata = {"job": row["job_uid"], "model": row["model"], "is_draft": bool(row["is_draft"]), **metadata,
                    **extra}  # fmt: skip
    return {"result_uid": result_uid, "result_data": annotations, "result_metadata": metadata}


class EventRepository(Repository):
    """``store.events``: the outbox (:meth:`emit`, called by the other repositories inside their transactions)
    and the dispatcher's side of push deliveries."""

    def emit(
        self,
        event_type: str,
        *,
        project_uid: str | None = None,
        task_uid: str | None = None,
        data: dict[str, Any] | None = None,
        task_types: list[str] | None = None,
    ) -> str:
        """Record an event and its deliveries, inside the open transaction of its cause; returns the event uid."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}")
        types = task_types if task_types is not None else project_task_types(self.conn, project_uid)
        uid, now = new_uid("evt"), now_iso()
        payload = {
            "event": event_type,
            "event_id": uid,
            "created_at": now,
            "project": project_uid,
            "task": task_uid,
            "task_types": types,
            "data": data or {},
            **sdk_payload_fields(self.conn, event_type, project_uid, task_uid, types, data or {}),
        }
        self.conn.execute(
            "INSERT INTO events (uid, type, project_uid, task_uid, task_types, payload, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (uid, event_type, project_uid, task_uid, json.dumps(types), json.dumps(payload), now),
        )
        agents = self.conn.execute(
            "SELECT uid, project_uid, task_types FROM agents WHERE is_active = 1 AND EXISTS "
            "(SELECT 1 FROM json_each(agents.events) e WHERE e.value = ?)",
            (event_type,),
        ).fetchall()
        for agent in agents:
            if agent["project_uid"] is not None and agent["project_uid"] != project_uid:
                continue
            wanted = json.loads(agent["task_types"])
            if wanted and not set(wanted) & set(types):
                continue
            self.conn.execute(
                "INSERT INTO deliveries (uid, agent_uid, event_uid, created_at) VALUES (?, ?, ?, ?)",
                (str(uuid.uuid4()), agent["uid"], uid, now),
            )
        return uid

    # ------------------------------------------------------------------ push deliveries (the dispatcher's side)
    def claim_deliveries(self, holder: str, limit: int, lease_s: float) -> list[dict[str, Any]]:
        """Up to ``limit`` due deliveries of active push agents (pending and due, or running with an expired lease),
        now held by ``holder``; each with its agent's url and secret and the event's type, task and payload."""
        now = time.time()
        due = self.conn.execute(  # a plain read first: an idle dispatcher polling takes no write lock
            "SELECT 1 FROM deliveries WHERE (status = 'pending' AND next_attempt_at <= ?) OR "
            "(status = 'running' AND lease_until < ?) LIMIT 1",
            (now, now),
        ).fetchone()
        if due is None or limit < 1:
            return []
        with transaction(self.conn):
            rows = self.conn.execute(
                "SELECT d.uid, d.attempts, a.uid AS agent_uid, a.callback_url, a.secret, e.type AS event_type, "
                "e.task_uid, e.payload FROM deliveries d JOIN agents a ON a.uid = d.agent_uid "
                "JOIN events e ON e.uid = d.event_uid WHERE a.callback_url IS NOT NULL AND a.is_active = 1 AND ("
                "(d.status = 'pending' AND d.next_attempt_at <= ?) OR (d.status = 'running' AND d.lease_until < ?)) "
                "ORDER BY d.next_attempt_at, d.id LIMIT ?",
                (now, now, limit),
            ).fetchall()
            for row in rows:
                self.conn.execute(
                    "UPDATE deliveries SET status = 'running', holder = ?, lease_until = ? WHERE uid = ?",
                    (holder, now + lease_s, row["uid"]),
                )
        return [dict(r) for r in rows]

    def record_attempt(
        self,
        delivery_uid: str,
        holder: str,
        *,
        ok: bool,
        started_at: str,
        response_status: int | None = None,
        response_excerpt: str | None = None,
        error: str | None = None,
        retry_at: float | None = None,
    ) -> bool:
        """Record one attempt as an execution and move the delivery on: succeeded, pending again at ``retry_at``,
        or failed. Returns False (and records nothing) if ``holder`` no longer holds the delivery."""
        with transaction(self.conn):
            row = self.conn.execute(
                "SELECT d.*, e.type, e.task_uid FROM deliveries d JOIN events e ON e.uid = d.event_uid WHERE d.uid = ?",
                (delivery_uid,),
            ).fetchone()
            if row is None or row["status"] != "running" or row["holder"] != holder:
                return False
            status = "succeeded" if ok else "failed"
            self.conn.execute(
                "INSERT INTO executions (uid, agent_uid, delivery_uid, event_type, task_uid, status, error, "
                "response_status, response_excerpt, started_at, completed_at, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (new_uid("exec"), row["agent_uid"], delivery_uid, row["type"], row["task_uid"], status, error,
                 response_status, response_excerpt, started_at, now_iso(), now_iso()),
            )  # fmt: skip
            if ok or retry_at is None:
                self.conn.execute(
                    "UPDATE deliveries SET status = ?, attempts = attempts + 1, lease_until = NULL, holder = NULL, "
                    "completed_at = ? WHERE uid = ?",
                    (status, now_iso(), delivery_uid),
                )
            else:
                self.conn.execute(
                    "UPDATE deliveries SET status = 'pending', attempts = attempts + 1, next_attempt_at = ?, "
                    "lease_until = NULL, holder = NULL WHERE uid = ?",
                    (retry_at, delivery_uid),
                )
        return True
