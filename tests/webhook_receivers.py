"""Real webhook receivers for the tests: an HTTP server on 127.0.0.1 (a free port) on a thread, which records every
request as it arrives and answers as a test scripts it (statuses in turn, a delay, a gate that holds answers)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


@dataclasses.dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering
    hold: threading.Event | None = None  # wait for this (at most 60 s) before answering


@dataclasses.dataclass
class Received:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    at: float  # time.monotonic() when the request was read

    @property
    def delivery(self) -> str:
        return self.headers["x-avala-webhook-delivery"]

    @property
    def event(self) -> str:
        return self.headers["x-avala-webhook-event"]

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    def signed_by(self, secret: str) -> bool:
        """Whether the signature header is the HMAC-SHA256 of the raw body under ``secret``, checked as a receiver
        would (constant-time comparison)."""
        expected = hmac.new(secret.encode("utf-8"), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("x-avala-webhook-signature", ""))


def answers(*statuses: int, headers: dict[str, str] | None = None) -> Callable[[int, Received], Reply]:
    """Answer the n-th request with ``statuses[n]`` (the last one from then on); ``headers`` on non-2xx answers."""

    def answer(n: int, received: Received) -> Reply:
        status = statuses[min(n, len(statuses) - 1)]
        return Reply(status, body=f"answer {n}: {status}".encode(), headers={} if status < 300 else dict(headers or {}))

    return answer


def slow(delay_s: float) -> Callable[[int, Received], Reply]:
    return lambda n, received: Reply(200, delay_s=delay_s)


def held(gate: threading.Event) -> Callable[[int, Received], Reply]:
    """Hold every answer until ``gate`` is set (then 200)."""
    return lambda n, received: Reply(200, hold=gate)


class Receiver:
    """``with Receiver(answers(500, 500, 200)) as receiver: ... receiver.url ... receiver.requests``."""

    def __init__(self, answer: Callable[[int, Received], Reply] | None = None, path: str = "/hook") -> None:
        self.answer = answer or (lambda n, received: Reply())
        self.requests: list[Received] = []
        self.in_flight = 0  # requests read and not yet answered
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
                with receiver.lock:
                    n = len(receiver.requests)
                    receiver.requests.append(received)
                    receiver.in_flight += 1
                try:
                    reply = receiver.answer(n, received)
                    if reply.hold is not None:
                        reply.hold.wait(60)
                    if reply.delay_s:
                        time.sleep(reply.delay_s)
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:  # the sender went away (timed out, or was killed)
                    pass
                finally:
                    with receiver.lock:
                        receiver.in_flight -= 1

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True  # a held answer never blocks closing
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def seen(self) -> list[Received]:
        with self.lock:
            return list(self.requests)

    def by_event(self) -> dict[str, list[Received]]:
        """Requests grouped by the event id in their body."""
        out: dict[str, list[Received]] = {}
        for received in self.seen():
            out.setdefault(received.json()["event_id"], []).append(received)
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def events_of(received: Sequence[Received]) -> list[str]:
    return [r.event for r in received]
