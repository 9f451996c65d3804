"""The event outbox: ``emit`` runs inside the transaction of the change that causes the event, writing the event
and one delivery per matching agent, so a crash can lose neither the change's event nor its deliveries.

An agent matches when it is active, lists the event type, has no project or the event's project, and has no
task types or one of the event's (the model types the event concerns: a job's, or the project's).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from typing import Any

from avala_infer.store.base import new_uid
from avala_infer.store.db import now_iso

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
)
TEST_EVENT = "agent.test"


def project_task_types(conn: sqlite3.Connection, project_uid: str | None) -> list[str]:
    if project_uid is None:
        return []
    row = conn.execute("SELECT models FROM projects WHERE uid = ?", (project_uid,)).fetchone()
    return sorted(json.loads(row["models"])) if row else []


def emit(
    conn: sqlite3.Connection,
    event_type: str,
    *,
    project_uid: str | None = None,
    task_uid: str | None = None,
    data: dict[str, Any] | None = None,
    task_types: list[str] | None = None,
) -> str:
    """Record an event and its deliveries; call inside an open transaction. Returns the event uid."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    types = task_types if task_types is not None else project_task_types(conn, project_uid)
    uid, now = new_uid("evt"), now_iso()
    payload = {
        "event": event_type,
        "event_id": uid,
        "created_at": now,
        "project": project_uid,
        "task": task_uid,
        "task_types": types,
        "data": data or {},
    }
    conn.execute(
        "INSERT INTO events (uid, type, project_uid, task_uid, task_types, payload, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (uid, event_type, project_uid, task_uid, json.dumps(types), json.dumps(payload), now),
    )
    agents = conn.execute(
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
        conn.execute(
            "INSERT INTO deliveries (uid, agent_uid, event_uid, created_at) VALUES (?, ?, ?, ?)",
            (str(uuid.uuid4()), agent["uid"], uid, now),
        )
    return uid
