"""The dispatcher: sends the store's due webhook deliveries in the background, a few at a time.

It claims due deliveries (``store.events.claim_deliveries``: each held under a lease), POSTs each on a thread of
its own and records every attempt back on its own thread and connection (``store.events.record_attempt``), so
labeling never waits for a receiver. A dispatcher killed mid-delivery records nothing for the attempts in flight:
their leases run out and the next dispatcher sends them again with the same delivery uid (at-least-once; receivers
deduplicate on ``X-Avala-Webhook-Delivery``). Several dispatchers may share a store.

``avala-infer dispatcher`` runs one as a process; :meth:`Dispatcher.start` runs one on a daemon thread.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from pathlib import Path
from typing import Any

from avala_infer.agents.delivery import Outcome, RetryPolicy, attempt
from avala_infer.errors import ConfigError
from avala_infer.store import Store, worker_id
from avala_infer.store.db import now_iso

log = logging.getLogger(__name__)


class Dispatcher:
    """Sends deliveries until :meth:`stop` (or, with ``until_idle``, until none is left to send).

    ``concurrency`` requests at most at once; ``lease_s``, how long a claimed delivery stays ours (it must outlast
    a request: more than ``timeout_s``); ``poll_s``, how often an idle dispatcher looks for due deliveries. The
    other keywords make the :class:`RetryPolicy` (``policy`` gives one whole).
    """

    def __init__(
        self,
        home: str | Path,
        *,
        concurrency: int = 4,
        lease_s: float = 30.0,
        poll_s: float = 0.5,
        policy: RetryPolicy | None = None,
        timeout_s: float | None = None,
        max_attempts: int | None = None,
        backoff_base_s: float | None = None,
        backoff_factor: float | None = None,
        backoff_cap_s: float | None = None,
        retry_after_cap_s: float | None = None,
        seed: int | None = None,
    ) -> None:
        overrides = {
            "timeout_s": timeout_s,
            "max_attempts": max_attempts,
            "backoff_base_s": backoff_base_s,
            "backoff_factor": backoff_factor,
            "backoff_cap_s": backoff_cap_s,
            "retry_after_cap_s": retry_after_cap_s,
        }
        policy = policy or RetryPolicy()
        self.policy = RetryPolicy(**{**vars(policy), **{k: v for k, v in overrides.items() if v is not None}})
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        if lease_s <= self.policy.timeout_s:
            raise ConfigError(
                f"the delivery lease ({lease_s:g}s) must outlast the request timeout ({self.policy.timeout_s:g}s), "
                "or another dispatcher would send a delivery still in flight; raise the lease or lower the timeout"
            )
        if poll_s <= 0:
            raise ConfigError(f"poll_s must be positive, got {poll_s}")
        self.home = Path(home)
        self.concurrency = int(concurrency)
        self.lease_s = float(lease_s)
        self.poll_s = float(poll_s)
        self.rng = random.Random(seed)
        self.id = worker_id()
        self.stopping = threading.Event()
        self.sent = 0  # attempts recorded by this dispatcher
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the loop
    def run(self, *, until_idle: bool = False) -> int:
        """Send deliveries until :meth:`stop`, or with ``until_idle`` until no delivery of an active push agent is
        pending or running (waiting out retries scheduled for later); returns the attempts recorded."""
        store = Store(self.home)  # this thread's own connection
        done: queue.Queue[tuple[dict[str, Any], Outcome]] = queue.Queue()
        in_flight = 0
        try:
            while not self.stopping.is_set():
                free = self.concurrency - in_flight
                claimed = store.events.claim_deliveries(self.id, free, self.lease_s) if free else []
                for delivery in claimed:
                    self._send(delivery, done)
                in_flight += len(claimed)
                if in_flight:
                    try:
                        self._record(store, *done.get(timeout=self.poll_s))
                        in_flight -= 1
                    except queue.Empty:
                        continue
                    while True:  # record whatever else finished meanwhile
                        try:
                            self._record(store, *done.get_nowait())
                        except queue.Empty:
                            break
                        in_flight -= 1
                elif until_idle and not self._work_left(store):
                    break
                else:
                    self.stopping.wait(self.poll_s)
            deadline = time.monotonic() + self.policy.timeout_s + 5.0
            while in_flight and time.monotonic() < deadline:  # stopping: finish and record what is in flight
                try:
                    self._record(store, *done.get(timeout=max(deadline - time.monotonic(), 0.01)))
                except queue.Empty:
                    break
                in_flight -= 1
        finally:
            store.close()
        return self.sent

    def _send(self, delivery: dict[str, Any], done: queue.Queue) -> None:
        def send() -> None:
            try:
                outcome = attempt(delivery, self.policy.timeout_s)
            except Exception as exc:  # a bug of ours, not the receiver's: record it as a retryable failure
                log.exception("delivery %s raised", delivery["uid"])
                outcome = Outcome(now_iso(), 0.0, error=f"{type(exc).__name__}: {exc}", retryable=True)
            done.put((delivery, outcome))

        threading.Thread(target=send, name=f"avala-infer-delivery-{delivery['uid'][:8]}", daemon=True).start()

    def _record(self, store: Store, delivery: dict[str, Any], outcome: Outcome) -> None:
        number = delivery["attempts"] + 1
        retry_at = None
        error = outcome.error
        if not outcome.ok and outcome.retryable:
            if number < self.policy.max_attempts:
                retry_at = time.time() + self.policy.delay(number, outcome, self.rng)
            else:
                error = f"{error}; gave up after {number} attempt(s)"
        recorded = store.events.record_attempt(
            delivery["uid"],
            self.id,
            ok=outcome.ok,
            started_at=outcome.started_at,
            response_status=outcome.status,
            response_excerpt=outcome.excerpt,
            error=error,
            retry_at=retry_at,
        )
        if not recorded:
            log.warning("delivery %s is no longer held by %s (its lease ran out, or its agent was deleted); "
                        "its attempt is not recorded", delivery["uid"], self.id)  # fmt: skip
            return
        self.sent += 1
        what = f"{delivery['event_type']} delivery {delivery['uid']} to {delivery['callback_url']} (attempt {number})"
        if outcome.ok:
            log.info("%s: HTTP %s in %.0f ms", what, outcome.status, outcome.latency_ms)
        elif retry_at is not None:
            log.warning("%s: %s; retrying in %.1fs", what, error, retry_at - time.time())
        else:
            log.warning("%s failed: %s", what, error)

    def _work_left(self, store: Store) -> bool:
        """Whether an active push agent still has a delivery pending (due now or later) or running."""
        cursor = None
        while True:
            agents, cursor = store.agents.list(limit=1000, cursor=cursor, kind=None)  # webhooks too
            for agent in agents:
                if agent["is_active"] and agent["callback_url"] and agent["execution_stats"]["pending_deliveries"]:
                    return True
            if cursor is None:
                return False

    # ------------------------------------------------------------------ as a thread
    def start(self) -> Dispatcher:
        """Run on a daemon thread (beside the client's or the worker's job thread)."""
        self._thread = threading.Thread(target=self.run, name="avala-infer-dispatcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Claim nothing more, record the attempts in flight (each ends within the request timeout), and wait."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
