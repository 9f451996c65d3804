"""The agent objects the local client returns: the cloud SDK's fields (``avala.types.agent``) as plain dataclasses.

``AgentExecution`` also answers to the names the Avala docs' examples use: ``event`` (the event type) and ``error``
(why an attempt failed).
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from avala_infer.client.types import _build


@dataclasses.dataclass
class Agent:
    """An agent: the events it listens to, where it is told (``callback_url``; none: it pulls), its filters.

    ``secret`` (the HMAC-SHA256 key of ``X-Avala-Webhook-Signature``) is set only on the object ``create``
    returns; ``get``/``list``/``update`` never show it again. ``execution_stats`` counts executions by status
    (``total``, ``succeeded``, ``failed``, ...) and ``pending_deliveries`` (events not yet delivered or answered).
    """

    uid: str
    name: str
    description: str | None = None
    events: list[str] = dataclasses.field(default_factory=list)
    callback_url: str | None = None
    is_active: bool = True
    project: str | None = None
    task_types: list[str] = dataclasses.field(default_factory=list)
    secret: str | None = None
    execution_stats: dict[str, int] | None = None
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Agent:
        return _build(cls, row)

    @property
    def pull_mode(self) -> bool:
        """True for an agent without a callback_url: its executions wait as pending for a consumer to lease."""
        return not self.callback_url


@dataclasses.dataclass
class AgentExecution:
    """One execution of an agent: a delivery attempt (push), a pull-mode answer, or a test.

    ``uid`` is the execution's uid; for a leased pull-mode execution (``client.agents.lease_executions``), whose
    attempt is still running, it is the uid to answer with ``client.agents.respond`` (the delivery's uid, which
    is also what ``delivery`` holds on the executions recorded for it). ``registration`` is the agent's uid (the
    cloud SDK's name). ``status``: ``succeeded`` or ``failed`` for a recorded attempt, ``running`` for a leased
    pull-mode execution. ``action`` and ``reason``: a pull consumer's answer (approve, reject, flag, skip).
    """

    uid: str
    registration: str
    event_type: str
    task: str | None = None
    result: str | None = None
    status: str | None = None
    action: str | None = None
    reason: str | None = None
    event_payload: dict[str, Any] | None = None
    response_payload: dict[str, Any] | None = None
    response_status: int | None = None
    response_excerpt: str | None = None
    error_message: str | None = None
    delivery: str | None = None
    attempts: int | None = None
    started_at: datetime.datetime | None = None
    completed_at: datetime.datetime | None = None
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AgentExecution:
        """From a row of the store's executions (with its event's ``payload``, if it had one)."""
        return _build(
            cls,
            {
                **row,
                "registration": row.get("agent_uid"),
                "task": row.get("task_uid"),
                "delivery": row.get("delivery_uid"),
                "reason": row.get("reason"),
                "error_message": row.get("error"),
                "event_payload": row.get("payload"),
                "result": ((row.get("payload") or {}).get("data") or {}).get("result"),
                "updated_at": row.get("completed_at") or row.get("created_at"),
            },
        )

    @classmethod
    def from_lease(cls, row: dict[str, Any], agent_uid: str) -> AgentExecution:
        """From a delivery the store just leased to a pull consumer (status ``running``)."""
        payload = row.get("payload") or {}
        data = payload.get("data") or {}
        return cls(
            uid=row["uid"],
            registration=agent_uid,
            event_type=row["event_type"],
            task=row.get("task_uid"),
            result=data.get("result"),
            status="running",
            event_payload=payload,
            delivery=row["uid"],
            attempts=row.get("attempts", 0) + 1,
            created_at=datetime.datetime.fromisoformat(payload["created_at"]) if payload.get("created_at") else None,
        )

    @property
    def event(self) -> str:
        """The event type (the docs' ``execution.event``)."""
        return self.event_type

    @property
    def error(self) -> str | None:
        """Why the attempt failed (the docs' ``execution.error``); None for a success."""
        return self.error_message
