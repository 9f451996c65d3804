"""Webhook subscriptions and their deliveries (``store.webhooks``), as the cloud SDK's ``/webhooks/`` and
``/webhook-deliveries/`` show them.

A subscription IS a push agent: a row of ``agents`` with ``kind = 'webhook'``, its ``target_url`` the agent's
``callback_url``, for every project and task type. It is created, checked (events, the callback URL policy,
the secret), matched to events, signed, sent and retried by the agents' code; only the listings keep the two
kinds apart. Its deliveries are rows of ``deliveries`` (``events.py`` draws their states), each shown with its
event and its last attempt (the last execution recorded for it). A deleted subscription's deliveries are no
longer listed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avala_infer.errors import ConfigError, NotFoundError
from avala_infer.store.agents import AgentRepository
from avala_infer.store.base import Repository, page, page_args, row_dict

KIND = "webhook"
NAME = "webhook"  # the agents row's name (a subscription has none of its own)
LIST_HINT = "`client.webhooks.list()` (GET /webhooks/) shows them"

_DELIVERIES = (
    "SELECT d.id, d.uid, d.agent_uid, d.status, d.attempts, d.next_attempt_at, d.created_at, d.completed_at, "
    "e.type AS event_type, e.payload, x.response_status, x.response_excerpt, x.error, "
    "x.completed_at AS attempted_at FROM deliveries d "
    "JOIN agents a ON a.uid = d.agent_uid AND a.kind = 'webhook' JOIN events e ON e.uid = d.event_uid "
    "LEFT JOIN executions x ON x.id = (SELECT MAX(id) FROM executions WHERE delivery_uid = d.uid) "
)


def _target(url: str | None) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("a webhook needs a target_url: the http(s) URL its events are POSTed to")
    return url


def _events(events: Sequence[str] | None) -> list[str]:
    if isinstance(events, str) or not events:
        raise ConfigError("a webhook needs a list of one or more event types, e.g. ['task.completed']")
    return list(events)


class WebhookRepository(Repository):
    """``store.webhooks``: create, list, get, update, delete subscriptions (through ``agents``, whose rules they
    follow); list and get their deliveries."""

    def __init__(self, conn: sqlite3.Connection, path: str | Path, *, agents: AgentRepository) -> None:
        super().__init__(conn, path)
        self.agents = agents

    def create(
        self, *, target_url: str, events: Sequence[str], is_active: bool = True, secret: str | None = None
    ) -> dict[str, Any]:
        """A new subscription; the returned dict holds its signing ``secret`` (``get`` never shows it again)."""
        row = self.agents.create(
            name=NAME,
            events=_events(events),
            callback_url=_target(target_url),
            is_active=bool(is_active),
            secret=secret,
            kind=KIND,
        )
        return {**self.get(row["uid"]), "secret": row["secret"]}

    def get(self, uid: str) -> dict[str, Any]:
        """The subscription without its secret: uid, target_url, events, is_active, created_at, updated_at."""
        row = self.conn.execute("SELECT * FROM agents WHERE uid = ? AND kind = ?", (uid, KIND)).fetchone()
        if row is None:
            raise NotFoundError(f"no webhook {uid!r} in the store at {self.path}; {LIST_HINT}")
        return _subscription(row_dict(row))

    def list(self, *, limit: int | None = None, cursor: str | None = None):
        """A page of subscriptions, oldest first: (rows, next cursor or None)."""
        rows, next_cursor = self.agents.list(limit=limit, cursor=cursor, kind=KIND)
        return [self.get(r["uid"]) for r in rows], next_cursor

    def update(
        self,
        uid: str,
        *,
        target_url: str | None = None,
        events: Sequence[str] | None = None,
        is_active: bool | None = None,
        secret: str | None = None,
    ) -> dict[str, Any]:
        """Change the fields given (None leaves one as it is; ``secret`` signs from the next delivery on)."""
        self.get(uid)
        self.agents.update(
            uid,
            callback_url=None if target_url is None else _target(target_url),
            events=None if events is None else _events(events),
            is_active=is_active,
            secret=secret,
        )
        return self.get(uid)

    def delete(self, uid: str) -> None:
        """Delete the subscription and the deliveries it has not had yet."""
        self.get(uid)
        self.agents.delete(uid)

    # ------------------------------------------------------------------ deliveries
    def list_deliveries(self, *, subscription: str | None = None, limit: int | None = None, cursor: str | None = None):
        """A page of deliveries to subscriptions (of ``subscription`` only, when given), oldest first."""
        if subscription is not None:
            self.get(subscription)
        limit, after = page_args(limit, cursor)
        rows = self.conn.execute(
            _DELIVERIES + "WHERE d.id > ? AND (? IS NULL OR d.agent_uid = ?) ORDER BY d.id LIMIT ?",
            (after, subscription, subscription, limit + 1),
        ).fetchall()
        rows, next_cursor = page(rows, limit)
        return [_delivery(r) for r in rows], next_cursor

    def get_delivery(self, uid: str) -> dict[str, Any]:
        """One delivery: its state, attempts, next attempt time, event (type, payload) and last attempt's answer."""
        row = self.conn.execute(_DELIVERIES + "WHERE d.uid = ?", (uid,)).fetchone()
        if row is None:
            raise NotFoundError(
                f"no webhook delivery {uid!r} in the store at {self.path}; `client.webhook_deliveries.list()` "
                "(GET /webhook-deliveries/) shows them"
            )
        return _delivery(row_dict(row))


def _subscription(row: dict[str, Any]) -> dict[str, Any]:
    events = row["events"]
    return {
        "id": row["id"],
        "uid": row["uid"],
        "target_url": row["callback_url"],
        "events": json.loads(events) if isinstance(events, str) else events,
        "is_active": bool(row["is_active"]),
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _delivery(row: dict[str, Any]) -> dict[str, Any]:
    """A deliveries row with its event and last attempt; ``next_attempt_at`` (unix time) only while a retry waits."""
    out = dict(row)
    out["payload"] = json.loads(out["payload"]) if isinstance(out["payload"], str) else out["payload"]
    if not (out["status"] == "pending" and out["attempts"] > 0):
        out["next_attempt_at"] = None
    return out
