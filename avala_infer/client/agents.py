"""Agents for the local client (``client.agents``), and the human side of the workflow that gives their events a
cause (``client.tasks.complete/review/reject``, ``client.results.accept/reject``).

Push agents (with a ``callback_url``) are sent a signed POST per event by the dispatcher. Pull agents (no
``callback_url``) are the protocol of the official ``avala-agents`` package: their executions wait as pending;
a consumer leases them and answers each with an action::

    for execution in client.agents.lease_executions(agent.uid, limit=10, lease_seconds=60):
        ...                                      # execution.event_type, execution.task, execution.event_payload
        client.agents.respond(execution.uid, action="approve", reason="looks right")

``lease_executions`` is the package's ``GET /agents/{uid}/executions/?status=pending`` (with a lease, so two
consumers never get the same execution; an unanswered one goes back to pending when its lease expires) and
``respond`` its ``POST /agent-actions/ {"execution", "action", "reason"}``. ``approve`` marks the execution's task
reviewed and ``reject`` rejects it (each emitting its event); ``flag`` and ``skip`` only complete the execution.
An execution takes one answer: a second one, or one without the lease, is an :class:`~avala_infer.errors.ConflictError`.

``register`` is how ``avala-agents`` starts (``POST /agents/`` with the same name on every start): it updates the
agent of that name, or creates it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from avala_infer.client.agent_types import Agent, AgentExecution
from avala_infer.client.resources import Tasks, _Resource
from avala_infer.client.types import CursorPage, Task
from avala_infer.errors import ConfigError, NotFoundError

# how long an execution handed to an HTTP poller (avala-agents) stays its own: its handler runs in between, one
# execution after another (POLL_LIMIT per poll), so this leaves minutes to each; unanswered, it is pending again
POLL_LEASE_SECONDS = 300.0
POLL_LIMIT = 10


def _fields(name, events, description, callback_url, is_active, project, task_types, secret) -> dict[str, Any]:
    """An agent's fields as the store takes them (create, register, update): the sequences as lists."""
    return {
        "name": name,
        "events": list(events) if events is not None else None,
        "description": description,
        "callback_url": callback_url,
        "is_active": is_active,
        "project": project,
        "task_types": list(task_types) if task_types is not None else None,
        "secret": secret,
    }


class Agents(_Resource):
    """``client.agents``: create, list, get, update, delete, test, list_executions; pull mode: lease_executions,
    respond."""

    def __init__(self, client) -> None:
        super().__init__(client)
        from avala_infer.store import worker_id

        self.holder = f"client:{worker_id()}"  # who holds this client's pull-mode leases

    def create(
        self,
        *,
        name: str,
        events: Sequence[str] | None = None,
        description: str | None = None,
        callback_url: str | None = None,
        is_active: bool | None = None,
        project: str | None = None,
        task_types: Sequence[str] | None = None,
        secret: str | None = None,
    ) -> Agent:
        """A new agent listening to ``events`` (``avala_infer.store.EVENT_TYPES``), of ``project`` only and of
        ``task_types`` (model types) only when given. With a ``callback_url`` (http or https, allowed by the
        callback URL policy of ``avala_infer/url_policy.py``, else UnsafeURLError) events are POSTed there, signed;
        without one the agent pulls (:meth:`lease_executions`). The returned agent's ``secret`` (generated unless
        given) is shown this once."""
        row = self._call(
            "agents.create",
            **_fields(name, events, description, callback_url, True if is_active is None else bool(is_active),
                      project, task_types, secret),
        )  # fmt: skip
        return Agent.from_row(row)

    def register(
        self,
        *,
        name: str,
        events: Sequence[str] | None = None,
        description: str | None = None,
        callback_url: str | None = None,
        is_active: bool | None = None,
        project: str | None = None,
        task_types: Sequence[str] | None = None,
        secret: str | None = None,
    ) -> tuple[Agent, bool]:
        """The agent named ``name`` with the fields given changed (None leaves a field as it is), or a new one
        (as :meth:`create`, its ``secret`` shown this once) when no agent has that name; and whether it is new."""
        row = self._call(
            "agents.register",
            **_fields(name, events, description, callback_url, is_active, project, task_types, secret),
        )
        return Agent.from_row(row), bool(row["created"])

    def list(self, *, limit: int | None = None, cursor: str | None = None) -> CursorPage[Agent]:
        return self._page(Agent, "agents.list", limit=limit, cursor=cursor)

    def get(self, uid: str) -> Agent:
        return Agent.from_row(self._agent_row(uid))

    def _agent_row(self, uid: str) -> dict[str, Any]:
        """The agent's row; a webhook subscription (an agents row of kind ``webhook``) is not an agent here."""
        row = self._call("agents.get", uid)
        if row.get("kind", "agent") != "agent":
            raise NotFoundError(f"no agent {uid!r}: it is a webhook subscription (client.webhooks, /webhooks/)")
        return row

    def update(
        self,
        uid: str,
        *,
        name: str | None = None,
        events: Sequence[str] | None = None,
        description: str | None = None,
        callback_url: str | None = None,
        is_active: bool | None = None,
        project: str | None = None,
        task_types: Sequence[str] | None = None,
        secret: str | None = None,
    ) -> Agent:
        """Change the fields given (None leaves a field as it is; ``callback_url=""`` makes it a pull agent;
        ``secret`` replaces the signing secret from the next delivery on)."""
        self._agent_row(uid)
        row = self._call(
            "agents.update", uid, **_fields(name, events, description, callback_url, is_active, project, task_types,
                                            secret)
        )  # fmt: skip
        return Agent.from_row(row)

    def delete(self, uid: str) -> None:
        """Delete the agent; events it has not been sent yet are dropped, its executions stay on record."""
        self._agent_row(uid)
        self._call("agents.delete", uid)

    def test(self, uid: str, *, timeout: float = 10.0) -> dict[str, Any]:
        """Send a signed ``agent.test`` event to the agent's callback_url now; returns ``success``, ``message``,
        ``status_code`` and ``latency_ms`` (and records the attempt as an execution)."""
        from avala_infer.agents.delivery import deliver_test
        from avala_infer.store import Store

        self.get(uid)  # an unknown uid fails here, as every other call does
        store = Store(self._client.home)  # its own connection: the POST must not hold the client's lock
        try:
            return deliver_test(store, uid, timeout)
        finally:
            store.close()

    def list_executions(
        self,
        uid: str,
        *,
        status: str | None = None,
        project: str | None = None,
        task_types: Sequence[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> CursorPage[AgentExecution]:
        """The agent's executions, oldest first: every delivery attempt, pull-mode answer and test (a plain read:
        :meth:`lease_executions` hands out the pending ones). Only those of ``status`` (succeeded, failed), of
        ``project``'s events and of events concerning one of ``task_types``, when given."""
        return self._page(
            AgentExecution,
            "agents.list_executions",
            uid,
            status=status or None,
            project=project or None,
            task_types=list(task_types) if task_types else None,
            limit=limit,
            cursor=cursor,
        )

    # ------------------------------------------------------------------ pull mode
    def lease_executions(
        self,
        uid: str,
        *,
        limit: int = 10,
        lease_seconds: float = 60.0,
        holder: str | None = None,
        project: str | None = None,
        task_types: Sequence[str] | None = None,
    ) -> list[AgentExecution]:
        """Up to ``limit`` pending executions of pull agent ``uid``, now ``running`` and held by this client (or
        ``holder``) for ``lease_seconds``; answer each with :meth:`respond` before then, or it goes back to
        pending (for this or another consumer, with the same uid). ``project`` and ``task_types`` narrow them to
        that project's events and to events concerning one of those model types."""
        try:
            limit, lease_seconds = int(limit), float(lease_seconds)
        except (TypeError, ValueError):
            raise ConfigError(
                f"limit (1-1000) and lease_seconds must be numbers, got {limit!r}, {lease_seconds!r}"
            ) from None
        if not 1 <= limit <= 1000:
            raise ConfigError(f"limit must be between 1 and 1000, got {limit}")
        if not float(lease_seconds) > 0:
            raise ConfigError(f"lease_seconds must be positive, got {lease_seconds}")
        rows = self._call(
            "agents.lease_executions",
            uid,
            holder or self.holder,
            limit=int(limit),
            lease_s=float(lease_seconds),
            project=project or None,
            task_types=list(task_types) if task_types else None,
        )
        return [AgentExecution.from_lease(row, uid) for row in rows]

    def respond(
        self, execution_uid: str, *, action: str, reason: str | None = None, holder: str | None = None
    ) -> AgentExecution:
        """Answer a leased execution with ``action`` (approve, reject, flag or skip) and an optional ``reason``;
        returns the execution recorded. An execution already answered, or whose lease is not this client's (or
        ``holder``'s) or expired, is an :class:`~avala_infer.errors.ConflictError`."""
        row = self._call("agents.answer_execution", execution_uid, holder or self.holder, action, reason or None)
        return AgentExecution.from_row(row)


class WorkflowTasks(Tasks):
    """``client.tasks`` with the human side of the workflow: complete, review and reject a task (each emits its
    event: task.completed, task.reviewed, task.rejected)."""

    def complete(self, uid: str, *, reason: str | None = None) -> Task:
        """A person finished the task."""
        return Task.from_row(self._call("items.set_task_status", uid, "completed", reason))

    def review(self, uid: str, *, reason: str | None = None) -> Task:
        """The task passed review."""
        return Task.from_row(self._call("items.set_task_status", uid, "reviewed", reason))

    def reject(self, uid: str, *, reason: str | None = None) -> Task:
        """The task was rejected (``reason`` travels in the event)."""
        return Task.from_row(self._call("items.set_task_status", uid, "rejected", reason))


class Results(_Resource):
    """``client.results``: accept or reject an automatic (draft) result; ``client.tasks.results(task)`` lists a
    task's. Accepting makes it final; rejecting deletes it. Emits result.accepted / result.rejected."""

    def accept(self, uid: str, *, reason: str | None = None) -> dict[str, Any]:
        return self._call("results.review", uid, True, reason)

    def reject(self, uid: str, *, reason: str | None = None) -> dict[str, Any]:
        return self._call("results.review", uid, False, reason)


__all__ = ["Agent", "AgentExecution", "Agents", "Results", "WorkflowTasks"]
