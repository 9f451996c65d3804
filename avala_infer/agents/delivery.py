"""Sign and POST one webhook delivery; classify its outcome; the backoff between attempts; ``agents.test()``.

The body is the event's ``payload`` exactly as the store holds it (JSON text, sent as UTF-8 bytes), so a receiver
verifies the signature over the bytes it received::

    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    hmac.compare_digest(expected, request.headers["X-Avala-Webhook-Signature"])

Outcomes: a 2xx answer succeeded; a network error, a timeout, a 5xx or a 429 is retried (exponential backoff
with full jitter, or the receiver's ``Retry-After`` on 429/503) until the attempts run out; any other answer
(a 4xx, a 3xx: redirects are not followed) failed for good. The connection is direct (no proxy) and the timeout
applies to connecting and to each read, as in ``requests``.

Before each POST the callback URL policy (:mod:`avala_infer.url_policy`) resolves the host and checks every
address; a refused URL is not sent and its delivery fails at once with the policy's message (a host name that
points at a metadata or link-local address, or one the ``AVALA_INFER_CALLBACK_DENY`` setting denies).
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import hmac
import http.client
import json
import random
import socket
import ssl
import time
import uuid
from typing import Any

from avala_infer.errors import ConfigError
from avala_infer.store.base import new_uid
from avala_infer.store.db import now_iso
from avala_infer.store.events import TEST_EVENT
from avala_infer.url_policy import resolve_callback_host, split_callback_url

EXCERPT_CHARS = 500
READ_LIMIT = 64 * 1024  # bytes of a response body read at most (the excerpt needs far fewer)
RETRY_STATUSES = frozenset({429})  # and every 5xx
RETRY_AFTER_STATUSES = frozenset({429, 503})


def user_agent() -> str:
    from avala_infer.version import __version__

    return f"avala-infer/{__version__}"


def sign(secret: str, body: bytes) -> str:
    """The ``X-Avala-Webhook-Signature`` of ``body``: hex HMAC-SHA256 keyed with the agent's secret."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def webhook_headers(event_type: str, delivery_uid: str, secret: str, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Connection": "close",
        "User-Agent": user_agent(),
        "X-Avala-Webhook-Event": event_type,
        "X-Avala-Webhook-Delivery": delivery_uid,
        "X-Avala-Webhook-Signature": sign(secret, body),
    }


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How long one attempt may take and how attempts are spaced: before attempt n+1 the delivery waits a
    uniform random time in [0, min(cap, base * factor ** (n - 1))] ("full jitter"), or what ``Retry-After``
    asks (at most ``retry_after_cap_s``). After ``max_attempts`` attempts it fails."""

    timeout_s: float = 10.0
    max_attempts: int = 8
    backoff_base_s: float = 1.0
    backoff_factor: float = 2.0
    backoff_cap_s: float = 300.0
    retry_after_cap_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ConfigError(f"the delivery timeout must be positive, got {self.timeout_s}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.backoff_base_s < 0 or self.backoff_cap_s < 0 or self.backoff_factor < 1:
            raise ConfigError(
                f"backoff needs base >= 0, cap >= 0 and factor >= 1, got base={self.backoff_base_s}, "
                f"cap={self.backoff_cap_s}, factor={self.backoff_factor}"
            )

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * self.backoff_factor ** max(attempt - 1, 0))
        return (rng or random).uniform(0.0, ceiling)

    def delay(self, attempt: int, outcome: Outcome, rng: random.Random | None = None) -> float:
        if outcome.retry_after_s is not None:
            return min(outcome.retry_after_s, self.retry_after_cap_s)
        return self.backoff(attempt, rng)


@dataclasses.dataclass
class Outcome:
    """One attempt: its HTTP status (None when no answer came), an excerpt of the answer, an error text, whether
    it may be retried, what ``Retry-After`` asked, and when it started (ISO) and how long it took."""

    started_at: str
    latency_ms: float
    status: int | None = None
    excerpt: str | None = None
    error: str | None = None
    retryable: bool = False
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the URL's host, pinned to the addresses the callback URL policy checked (its host name is
    resolved here, once: a DNS answer that changes before the connect cannot send the request elsewhere).
    Raises UnsafeURLError (or ConfigError, a bad policy setting) and OSError (the name does not resolve)."""
    parts = split_callback_url(url)
    addresses = resolve_callback_host(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if parts.scheme == "https":  # certificate and SNI still name the host, not the address
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    conn._create_connection = _pinned(addresses)  # http.client's own hook for how it opens the socket
    return conn, path


def _pinned(addresses: list[tuple]):
    """``socket.create_connection`` over already resolved (and checked) ``getaddrinfo`` entries, in order."""

    def create_connection(address, timeout=None, source_address=None, *args, **kwargs) -> socket.socket:
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                error = exc
                sock.close()
        raise error or OSError(f"no address to connect to for {address}")

    return create_connection


def _describe(exc: BaseException, url: str, timeout: float) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"timed out after {timeout:g}s waiting for {url}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {url} (is the receiver running?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host of {url}: {exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error talking to {url}: {exc}"
    return f"{type(exc).__name__} talking to {url}: {exc}"


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Outcome:
    """POST ``body`` to ``url`` once; never raises for network trouble (the outcome says what happened)."""
    started_at, started = now_iso(), time.perf_counter()

    def took() -> float:
        return round((time.perf_counter() - started) * 1000.0, 3)

    try:
        conn, path = _connection(url, timeout)
    except ConfigError as exc:  # the callback URL policy refused it (UnsafeURLError): not sent, not retried
        return Outcome(started_at, took(), error=str(exc))
    except OSError as exc:  # the host name does not resolve (now): retried
        return Outcome(started_at, took(), error=_describe(exc, url, timeout), retryable=True)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read(READ_LIMIT)
        status = response.status
        retry_after = response.getheader("Retry-After")
    except (OSError, http.client.HTTPException) as exc:
        return Outcome(started_at, took(), error=_describe(exc, url, timeout), retryable=True)
    finally:
        conn.close()
    outcome = Outcome(started_at, took(), status=status, excerpt=raw.decode("utf-8", "replace")[:EXCERPT_CHARS])
    if outcome.ok:
        return outcome
    reason = http.client.responses.get(status, "")
    if status >= 500 or status in RETRY_STATUSES:
        outcome.error = f"HTTP {status} {reason}".rstrip()
        outcome.retryable = True
        if status in RETRY_AFTER_STATUSES:
            outcome.retry_after_s = parse_retry_after(retry_after)
    elif 300 <= status < 400:
        outcome.error = f"HTTP {status} {reason}: redirects are not followed; set callback_url to the final URL"
    else:
        outcome.error = f"HTTP {status} {reason}: not retried (the receiver refused the request)"
    return outcome


def attempt(delivery: dict[str, Any], timeout: float) -> Outcome:
    """Send one claimed delivery (a row of ``store.events.claim_deliveries``)."""
    body = delivery["payload"].encode("utf-8")
    headers = webhook_headers(delivery["event_type"], delivery["uid"], delivery["secret"], body)
    return post(delivery["callback_url"], body, headers, timeout)


def deliver_test(store, agent_uid: str, timeout: float = 10.0) -> dict[str, Any]:
    """Send a signed ``agent.test`` event to the agent now (active or not), record it as an execution, and return
    ``{"success", "message", "status_code", "latency_ms"}``. The store is used only before and after the POST,
    so a caller may pass a connection of its own to avoid holding a shared one for the request."""
    agent = store.agents.get(agent_uid)
    url = agent["callback_url"]
    if not url:
        message = f"agent {agent_uid} has no callback_url (pull mode): its consumer leases executions instead"
        return {"success": False, "message": message, "status_code": None, "latency_ms": 0.0}
    payload = {
        "event": TEST_EVENT,
        "event_id": new_uid("evt"),
        "created_at": now_iso(),
        "project": agent["project"],
        "task": None,
        "task_types": agent["task_types"],
        "data": {"agent": agent_uid, "name": agent["name"], "message": "a test event from avala-infer"},
        "event_type": TEST_EVENT,  # the Avala SDK's names, as every event's payload has them
        "project_uid": agent["project"],
        "task_uid": None,
    }
    body = json.dumps(payload).encode("utf-8")
    delivery_uid = str(uuid.uuid4())
    headers = webhook_headers(TEST_EVENT, delivery_uid, store.agents.secret(agent_uid), body)
    outcome = post(url, body, headers, timeout)
    store.agents.record_test_execution(
        agent_uid,
        delivery_uid=delivery_uid,
        status="succeeded" if outcome.ok else "failed",
        error=outcome.error,
        response_status=outcome.status,
        response_excerpt=outcome.excerpt,
        started_at=outcome.started_at,
    )
    if outcome.ok:
        message = f"{url} answered HTTP {outcome.status} in {outcome.latency_ms:.0f} ms"
    else:
        message = outcome.error or f"{url} answered HTTP {outcome.status}"
    return {"success": outcome.ok, "message": message, "status_code": outcome.status, "latency_ms": outcome.latency_ms}
