"""Agents, their executions (one per delivery attempt, pull-mode answer or test) and pull-mode leases
(``store.agents``). The deliveries themselves, and the dispatcher's side of them, are the events' (``events.py``,
whose docstring draws the delivery states)."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avala_infer.errors import ConfigError, ConflictError, NotFoundError
from avala_infer.store.base import Repository, new_uid, page, page_args, row_dict
from avala_infer.store.db import now_iso, transaction
from avala_infer.store.events import EVENT_TYPES
from avala_infer.store.items import ItemRepository
from avala_infer.store.projects import ProjectRepository
from avala_infer.types import ModelType
from avala_infer.url_policy import check_callback_url

PULL_ACTIONS = ("approve", "reject", "flag", "skip")


def _check_events(events: Sequence[str] | None) -> list[str]:
    events = [str(e) for e in (events or [])]
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if unknown:
        raise ConfigError(f"unknown event type(s) {unknown}; events: {', '.join(EVENT_TYPES)}")
    return events


def _check_url(url: str | None) -> str | None:
    """None for a pull agent (no URL); else the URL if the callback URL policy allows it as written
    (``avala_infer/url_policy.py``: http(s) only, no link-local or metadata address or name; UnsafeURLError)."""
    if url is None or url == "":
        return None
    return check_callback_url(str(url))


def _check_secret(secret: str) -> str:
    if not isinstance(secret, str) or not secret.strip():
        raise ConfigError("an agent's secret cannot be empty; give one, or leave it out for a random one")
    return secret


def _event_filters(project: str | None, task_types: Sequence[str] | None) -> tuple[str, list[Any]]:
    """SQL conditions (after ``AND``) on the joined event ``e``: of ``project``, of one of ``task_types``."""
    where, args = "", []
    if project:
        where += " AND e.project_uid = ?"
        args.append(project)
    types = [ModelType.parse(t).value for t in (task_types or []) if str(t).strip()]
    if types:
        marks = ", ".join("?" * len(types))
        where += f" AND EXISTS (SELECT 1 FROM json_each(e.task_types) t WHERE t.value IN ({marks}))"
        args.extend(types)
    return where, args


class AgentRepository(Repository):
    """``store.agents``: agents (a push agent has a callback_url, a pull agent none), their executions, and the
    pull consumer's leases and answers (an ``approve`` or ``reject`` answer sets the task's status, through
    ``items``, in the same transaction)."""

    def __init__(
        self, conn: sqlite3.Connection, path: str | Path, *, projects: ProjectRepository, items: ItemRepository
    ) -> None:
        super().__init__(conn, path)
        self.projects = projects
        self.items = items

    # ------------------------------------------------------------------ agents
    def create(
        self,
        *,
        name: str,
        events: Sequence[str] | None = None,
        description: str | None = None,
        callback_url: str | None = None,
        is_active: bool = True,
        project: str | None = None,
        task_types: Sequence[str] | None = None,
        secret: str | None = None,
        kind: str = "agent",
    ) -> dict[str, Any]:
        """A new agent; the returned dict holds its signing ``secret`` (``get`` never shows it again).
        ``kind="webhook"`` makes a webhook subscription (``store.webhooks``): the same row, listed apart."""
        if not str(name or "").strip():
            raise ConfigError("an agent needs a name")
        if project is not None:
            self.projects.get(project)
        types = [ModelType.parse(t).value for t in (task_types or [])]
        uid, now = new_uid("agent"), now_iso()
        secret = secrets.token_hex(32) if secret is None else _check_secret(secret)
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO agents (uid, name, description, events, callback_url, is_active, project_uid, task_types, "
                "secret, created_at, updated_at, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (uid, name, description, json.dumps(_check_events(events)), _check_url(callback_url), int(is_active),
                 project, json.dumps(types), secret, now, now, kind),
            )  # fmt: skip
        return {**self.get(uid), "secret": secret}

    def get(self, uid: str) -> dict[str, Any]:
        """The agent without its secret, with its ``execution_stats``."""
        agent = self._one("agents", uid, "agent", "`avala-infer agents list` shows them")
        return self._public_agent(agent)

    def secret(self, uid: str) -> str:
        """The agent's signing secret (for the code that signs its deliveries)."""
        return self._one("agents", uid, "agent", "`avala-infer agents list` shows them")["secret"]

    def _public_agent(self, agent: dict[str, Any]) -> dict[str, Any]:
        agent = dict(agent)
        agent.pop("secret", None)
        agent["is_active"] = bool(agent["is_active"])
        agent["events"] = json.loads(agent["events"]) if isinstance(agent["events"], str) else agent["events"]
        agent["task_types"] = (
            json.loads(agent["task_types"]) if isinstance(agent["task_types"], str) else agent["task_types"]
        )
        agent["project"] = agent.pop("project_uid", None)
        agent["execution_stats"] = self.execution_stats(agent["uid"])
        return agent

    def list(self, *, limit: int | None = None, cursor: str | None = None, kind: str | None = "agent"):
        """A page of agents (without secrets), oldest first: (rows, next cursor or None). Only rows of ``kind``
        (``"agent"``: no webhook subscriptions; ``"webhook"``: only those; None: both)."""
        limit, after = page_args(limit, cursor)
        rows, next_cursor = page(
            self.conn.execute(
                "SELECT * FROM agents WHERE id > ? AND (? IS NULL OR kind = ?) ORDER BY id LIMIT ?",
                (after, kind, kind, limit + 1),
            ).fetchall(),
            limit,
        )
        return [self._public_agent(r) for r in rows], next_cursor

    def update(self, uid: str, **changes: Any) -> dict[str, Any]:
        """Change the fields given (None leaves one as it is); an unknown field is a ConfigError."""
        self.get(uid)
        columns: dict[str, Any] = {}
        for key, value in changes.items():
            if value is None:
                continue
            if key == "events":
                columns["events"] = json.dumps(_check_events(value))
            elif key == "task_types":
                columns["task_types"] = json.dumps([ModelType.parse(t).value for t in value])
            elif key == "callback_url":
                columns["callback_url"] = _check_url(value)
            elif key == "is_active":
                columns["is_active"] = int(bool(value))
            elif key == "project":
                self.projects.get(value)
                columns["project_uid"] = value
            elif key in ("name", "description"):
                columns[key] = str(value)
            elif key == "secret":  # a new signing key, from the next delivery on
                columns["secret"] = _check_secret(value)
            else:
                raise ConfigError(f"agents have no field {key!r}")
        if columns:
            sets = ", ".join(f"{k} = ?" for k in columns)
            with transaction(self.conn):
                self.conn.execute(
                    f"UPDATE agents SET {sets}, updated_at = ? WHERE uid = ?",  # noqa: S608
                    (*columns.values(), now_iso(), uid),
                )
        return self.get(uid)

    def delete(self, uid: str) -> None:
        """Delete the agent and the deliveries it has not had yet (its executions stay, for the record)."""
        self.get(uid)
        with transaction(self.conn):
            self.conn.execute("DELETE FROM deliveries WHERE agent_uid = ? AND status IN ('pending', 'running')", (uid,))
            self.conn.execute("DELETE FROM agents WHERE uid = ?", (uid,))

    def register(self, *, name: str, **fields: Any) -> dict[str, Any]:
        """Create the agent named ``name``, or update the oldest agent of that name with the fields given (None
        leaves one as it is): how ``avala-agents`` registers, the same name on every start. The returned dict
        says ``created``; a new agent's holds its ``secret``."""
        if not str(name or "").strip():
            raise ConfigError("an agent needs a name")
        row = self.conn.execute(
            "SELECT uid FROM agents WHERE name = ? AND kind = 'agent' ORDER BY id LIMIT 1", (name,)
        ).fetchone()
        if row is None:
            given = {key: value for key, value in fields.items() if value is not None}  # the rest: create's defaults
            return {**self.create(name=name, **given), "created": True}
        return {**self.update(row["uid"], **fields), "created": False}

    # ------------------------------------------------------------------ executions
    def execution_stats(self, agent_uid: str) -> dict[str, int]:
        """Executions by status, their ``total``, and the deliveries still ``pending_deliveries``."""
        rows = self.conn.execute(
            "SELECT status, COUNT(*) FROM executions WHERE agent_uid = ? GROUP BY status", (agent_uid,)
        ).fetchall()
        stats = {status: count for status, count in rows}
        pending = self.conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE agent_uid = ? AND status IN ('pending', 'running')", (agent_uid,)
        ).fetchone()[0]
        return {"total": sum(stats.values()), **stats, "pending_deliveries": pending}

    def list_executions(
        self,
        agent_uid: str,
        *,
        status: str | None = None,
        project: str | None = None,
        task_types: Sequence[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ):
        """A page of the agent's executions, oldest first, each with its event's ``payload`` (None for a test);
        only those of ``status``, of ``project``'s events, of events concerning one of ``task_types``, if given."""
        self.get(agent_uid)
        limit, after = page_args(limit, cursor)
        where, args = _event_filters(project, task_types)
        if status:
            where += " AND x.status = ?"
            args.append(status)
        rows = self.conn.execute(
            "SELECT x.*, e.payload FROM executions x LEFT JOIN deliveries d ON d.uid = x.delivery_uid "
            f"LEFT JOIN events e ON e.uid = d.event_uid WHERE x.agent_uid = ? AND x.id > ?{where} "  # noqa: S608
            "ORDER BY x.id LIMIT ?",
            (agent_uid, after, *args, limit + 1),
        ).fetchall()
        items, next_cursor = page(rows, limit)
        for item in items:
            item["payload"] = json.loads(item["payload"]) if item.get("payload") else None
        return items, next_cursor

    def record_test_execution(self, agent_uid: str, **fields: Any) -> dict[str, Any]:
        """An ``agent.test`` attempt, recorded as an execution of the agent."""
        uid = new_uid("exec")
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO executions (uid, agent_uid, delivery_uid, event_type, status, error, response_status, "
                "response_excerpt, started_at, completed_at, created_at) VALUES (?, ?, ?, 'agent.test', ?, ?, ?, ?, "
                "?, ?, ?)",
                (uid, agent_uid, fields["delivery_uid"], fields["status"], fields.get("error"),
                 fields.get("response_status"), fields.get("response_excerpt"), fields["started_at"], now_iso(),
                 now_iso()),
            )  # fmt: skip
        return row_dict(self.conn.execute("SELECT * FROM executions WHERE uid = ?", (uid,)).fetchone())

    # ------------------------------------------------------------------ pull mode
    def lease_executions(
        self,
        agent_uid: str,
        holder: str,
        *,
        limit: int = 10,
        lease_s: float = 60.0,
        project: str | None = None,
        task_types: Sequence[str] | None = None,
    ):
        """Pending (or lease-expired) deliveries of a pull agent (no callback_url), now running for ``holder``
        until ``lease_s`` from now; each with the event payload. Unanswered, they go back to pending. Only those
        of ``project``'s events and of events concerning one of ``task_types``, if given."""
        agent = self.get(agent_uid)
        if agent["callback_url"]:
            raise ConfigError(f"agent {agent_uid} pushes to {agent['callback_url']}; only agents without one pull")
        if not agent["is_active"]:
            return []  # an inactive agent receives nothing, pulled or pushed
        now = time.time()
        where, args = _event_filters(project, task_types)
        with transaction(self.conn):
            rows = self.conn.execute(
                "SELECT d.uid, d.attempts, e.type AS event_type, e.task_uid, e.payload FROM deliveries d "
                "JOIN events e ON e.uid = d.event_uid WHERE d.agent_uid = ? AND ((d.status = 'pending') OR "
                f"(d.status = 'running' AND d.lease_until < ?)){where} ORDER BY d.id LIMIT ?",  # noqa: S608
                (agent_uid, now, *args, int(limit)),
            ).fetchall()
            for row in rows:
                self.conn.execute(
                    "UPDATE deliveries SET status = 'running', holder = ?, lease_until = ?, attempts = attempts + 1 "
                    "WHERE uid = ?",
                    (holder, now + lease_s, row["uid"]),
                )
        return [{**dict(r), "payload": json.loads(r["payload"])} for r in rows]

    def answer_execution(self, delivery_uid: str, holder: str, action: str, reason: str | None = None) -> dict:
        """Complete a leased pull delivery with an action; approve/reject review/reject its task."""
        if action not in PULL_ACTIONS:
            raise ConfigError(f"action must be one of {', '.join(PULL_ACTIONS)}, got {action!r}")
        with transaction(self.conn):
            row = self.conn.execute(
                "SELECT d.*, e.type, e.task_uid, e.project_uid FROM deliveries d JOIN events e ON e.uid = d.event_uid "
                "WHERE d.uid = ?",
                (delivery_uid,),
            ).fetchone()
            if row is None:  # the uid of the execution recorded for a delivery answers for that delivery
                recorded = self.conn.execute(
                    "SELECT delivery_uid FROM executions WHERE uid = ?", (delivery_uid,)
                ).fetchone()
                if recorded is not None:
                    row = self.conn.execute(
                        "SELECT d.*, e.type, e.task_uid, e.project_uid FROM deliveries d "
                        "JOIN events e ON e.uid = d.event_uid WHERE d.uid = ?",
                        (recorded["delivery_uid"],),
                    ).fetchone()
            if row is None:
                raise NotFoundError(f"no execution {delivery_uid!r} to answer")
            delivery_uid = row["uid"]
            if row["action"] is not None:
                raise ConflictError(
                    f"execution {delivery_uid} was already answered ({row['action']} at {row['completed_at']}); "
                    "an action is accepted once"
                )
            if row["status"] != "running" or row["holder"] != holder or (row["lease_until"] or 0) < time.time():
                raise ConflictError(
                    f"execution {delivery_uid} is not leased by {holder} (never leased, another consumer's, or its "
                    "lease expired): lease it again, from the pending executions"
                )
            now = now_iso()
            self.conn.execute(
                "UPDATE deliveries SET status = 'succeeded', action = ?, reason = ?, lease_until = NULL, "
                "completed_at = ? WHERE uid = ?",
                (action, reason, now, delivery_uid),
            )
            uid = new_uid("exec")
            self.conn.execute(
                "INSERT INTO executions (uid, agent_uid, delivery_uid, event_type, task_uid, status, action, reason, "
                "started_at, completed_at, created_at) VALUES (?, ?, ?, ?, ?, 'succeeded', ?, ?, ?, ?, ?)",
                (uid, row["agent_uid"], delivery_uid, row["type"], row["task_uid"], action, reason, now, now, now),
            )
            if action in ("approve", "reject") and row["task_uid"]:
                self.items.apply_task_status(row["task_uid"], "reviewed" if action == "approve" else "rejected", reason)
        return row_dict(self.conn.execute("SELECT * FROM executions WHERE uid = ?", (uid,)).fetchone())
