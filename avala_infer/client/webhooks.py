"""Webhook subscriptions (``client.webhooks``) and their deliveries (``client.webhook_deliveries``), as the cloud
SDK's: a subscription POSTs every event of its ``events`` (of every project) to its ``target_url``, signed with
its ``secret``. It is a push agent underneath (the same signing, dispatcher, retries and callback URL policy),
listed apart from the agents.

>>> hook = client.webhooks.create(target_url="http://127.0.0.1:9000/hook", events=["task.completed"])  # doctest: +SKIP
>>> hook.secret                     # shown once: verify X-Avala-Webhook-Signature with it    # doctest: +SKIP
>>> client.webhooks.test(hook.uid)  # {"success": True, "message": ..., "status_code": 200, ...}  # doctest: +SKIP
>>> [d.status for d in client.webhook_deliveries.list()]                                    # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Any

from avala_infer.client.resources import _Resource
from avala_infer.client.types import CursorPage, _build, _time

# a delivery's state in the store -> the SDK's status: pending (never tried), retrying (a retry waits), sending
# (an attempt in flight), delivered (a 2xx answer), failed (attempts used up, or an answer retrying cannot fix)
STATUSES = {"running": "sending", "succeeded": "delivered", "failed": "failed"}


@dataclasses.dataclass
class Webhook:
    """A subscription. ``secret`` (the HMAC-SHA256 key of ``X-Avala-Webhook-Signature``) is set only on the object
    ``create`` returns."""

    uid: str
    target_url: str
    events: list[str] = dataclasses.field(default_factory=list)
    is_active: bool = True
    secret: str | None = None
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Webhook:
        return _build(cls, row)


@dataclasses.dataclass
class WebhookDelivery:
    """One event for one subscription, over all its attempts (the ``X-Avala-Webhook-Delivery`` of each).

    ``status``: pending, retrying, sending, delivered or failed; ``attempts``: attempts made; ``next_retry_at``:
    when the next one is due (only while retrying); ``response_status``, ``response_body`` (an excerpt) and
    ``error_message``: the last attempt's answer, or why it got none."""

    uid: str
    subscription: str
    event_type: str
    payload: dict[str, Any] | None = None
    response_status: int | None = None
    response_body: str | None = None
    attempts: int = 0
    next_retry_at: datetime.datetime | None = None
    status: str | None = None
    error_message: str | None = None
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> WebhookDelivery:
        state, attempts = row["status"], row["attempts"]
        status = STATUSES.get(state) or ("retrying" if attempts else "pending")
        next_at = row.get("next_attempt_at")
        return cls(
            uid=row["uid"],
            subscription=row["agent_uid"],
            event_type=row["event_type"],
            payload=row.get("payload"),
            response_status=row.get("response_status"),
            response_body=row.get("response_excerpt"),
            attempts=attempts,
            next_retry_at=datetime.datetime.fromtimestamp(next_at, datetime.timezone.utc) if next_at else None,
            status=status,
            error_message=row.get("error"),
            created_at=_time(row.get("created_at")),
            updated_at=_time(row.get("completed_at") or row.get("attempted_at") or row.get("created_at")),
        )

    @property
    def event(self) -> str:
        """The event type (the docs' name)."""
        return self.event_type


class Webhooks(_Resource):
    """``client.webhooks``: create, list, get, update, delete, test."""

    def create(
        self, *, target_url: str, events: Sequence[str], is_active: bool | None = None, secret: str | None = None
    ) -> Webhook:
        """A new subscription to ``events`` (``avala_infer.store.EVENT_TYPES``), POSTed to ``target_url`` (http or
        https, allowed by the callback URL policy of ``avala_infer/url_policy.py``, else UnsafeURLError). The
        returned object's ``secret`` (generated unless given) is shown this once."""
        row = self._call(
            "webhooks.create",
            target_url=target_url,
            events=list(events) if events is not None and not isinstance(events, str) else events,
            is_active=True if is_active is None else bool(is_active),
            secret=secret,
        )
        return Webhook.from_row(row)

    def list(self, *, limit: int | None = None, cursor: str | None = None) -> CursorPage[Webhook]:
        return self._page(Webhook, "webhooks.list", limit=limit, cursor=cursor)

    def get(self, uid: str) -> Webhook:
        return Webhook.from_row(self._call("webhooks.get", uid))

    def update(
        self,
        uid: str,
        *,
        target_url: str | None = None,
        events: Sequence[str] | None = None,
        is_active: bool | None = None,
        secret: str | None = None,
    ) -> Webhook:
        """Change the fields given (None leaves a field as it is; ``secret`` signs from the next delivery on)."""
        row = self._call(
            "webhooks.update",
            uid,
            target_url=target_url,
            events=list(events) if events is not None and not isinstance(events, str) else events,
            is_active=is_active,
            secret=secret,
        )
        return Webhook.from_row(row)

    def delete(self, uid: str) -> None:
        """Delete the subscription; events not yet sent to it are dropped."""
        self._call("webhooks.delete", uid)

    def test(self, uid: str, *, timeout: float = 10.0) -> dict[str, Any]:
        """Send a signed ``agent.test`` event to the target_url now; returns ``success``, ``message``,
        ``status_code`` and ``latency_ms``."""
        from avala_infer.agents.delivery import deliver_test
        from avala_infer.store import Store

        self.get(uid)  # an unknown uid (or an agent's) fails here
        store = Store(self._client.home)  # its own connection: the POST must not hold the client's lock
        try:
            return deliver_test(store, uid, timeout)
        finally:
            store.close()


class WebhookDeliveries(_Resource):
    """``client.webhook_deliveries``: list (of one ``subscription`` when given) and get."""

    def list(
        self, *, subscription: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> CursorPage[WebhookDelivery]:
        return self._page(
            WebhookDelivery, "webhooks.list_deliveries", subscription=subscription, limit=limit, cursor=cursor
        )

    def get(self, uid: str) -> WebhookDelivery:
        return WebhookDelivery.from_row(self._call("webhooks.get_delivery", uid))


__all__ = ["Webhook", "WebhookDeliveries", "WebhookDelivery", "Webhooks"]
