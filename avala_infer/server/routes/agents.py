"""Agents over HTTP, through the app's client (the same rules as the Python API and the CLI), as the Avala SDK
and ``avala-agents`` call them.

- ``POST /agents/`` registers by name: a new name creates the agent (201, its ``secret`` shown this once), a known
  one updates that agent with the fields sent (200). ``avala-agents`` posts the same name on every start and
  must get the same agent back; ``GET/PATCH/DELETE /agents/{uid}/`` (DELETE 204), ``GET /agents/``.
- ``POST /agents/{uid}/test/`` (no body) sends a signed ``agent.test`` event now: ``{success, message,
  status_code, latency_ms}``.
- ``GET /agents/{uid}/executions/`` is a plain read of the executions recorded, filtered by ``status``,
  ``project`` and ``task_types=a,b``; except ``?status=pending``, the ``avala-agents`` poll, which LEASES up to
  ``limit`` (default 10) pending executions to the caller for 300 s (``POLL_LEASE_SECONDS``) and answers them
  ``running``: two pollers never get the same one, and one left unanswered is pending again after its lease.
- ``POST /agent-actions/ {execution, action, reason}`` answers a leased execution once (approve, reject, flag,
  skip): a second answer, or one after the lease ran out, is a 409.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from avala_infer.client.agent_types import Agent, AgentExecution
from avala_infer.client.agents import POLL_LEASE_SECONDS, POLL_LIMIT
from avala_infer.server.pages import CURSOR, LIMIT, client_of, jsonable, no_content, page_json
from avala_infer.server.schemas import DateTime, Page, errors

router = APIRouter(tags=["agents"])


class AgentFields(BaseModel):
    """The fields of an agent that a request may set; None (or absent) leaves a field as it is."""

    model_config = ConfigDict(extra="forbid")

    events: list[str] | None = Field(None, description="Event types the agent listens to")
    description: str | None = None
    callback_url: str | None = Field(None, description="Where events are POSTed, signed; none (or ''): it pulls")
    is_active: bool | None = None
    project: str | None = Field(None, description="Only this project's events")
    task_types: list[str] | None = Field(None, description="Only events concerning these model types")
    secret: str | None = Field(None, description="The signing secret (generated when a new agent has none)")


class AgentCreate(AgentFields):
    name: str = Field(..., description="The agent's name: posting a known name updates that agent")


class AgentUpdate(AgentFields):
    name: str | None = None


class AgentAction(BaseModel):
    """The body of ``POST /agent-actions/``."""

    model_config = ConfigDict(extra="forbid")

    execution: str = Field(..., description="The uid of the execution handed out by the pending poll")
    action: str = Field(..., description="approve, reject, flag or skip")
    reason: str | None = None


class AgentOut(BaseModel):
    """An agent: the SDK's ``Agent`` fields (``secret`` only in the answer that created it)."""

    uid: str
    name: str
    description: str | None
    events: list[str]
    callback_url: str | None = Field(description="null: a pull agent (avala-agents polls its executions)")
    is_active: bool
    project: str | None
    task_types: list[str]
    secret: str | None
    execution_stats: dict[str, int] | None = Field(description="Executions by status, total, pending_deliveries")
    created_at: DateTime | None
    updated_at: DateTime | None


class ExecutionOut(BaseModel):
    """An execution: the SDK's ``AgentExecution`` fields, ours, and the docs' ``event`` and ``error``."""

    uid: str = Field(description="For a leased (running) execution: the uid to answer in POST /agent-actions/")
    registration: str = Field(description="The agent's uid")
    event_type: str
    task: str | None
    result: str | None
    status: str | None = Field(description="running (leased to a poller), succeeded or failed")
    action: str | None = Field(description="A poller's answer: approve, reject, flag or skip")
    reason: str | None
    event_payload: dict[str, Any] = Field(description="The event's payload ({} for a test)")
    response_payload: dict[str, Any] | None
    response_status: int | None = Field(description="A push attempt's HTTP status")
    response_excerpt: str | None
    error_message: str | None
    delivery: str | None = Field(description="The delivery (one per agent and event) this execution is of")
    attempts: int | None
    started_at: DateTime | None
    completed_at: DateTime | None
    created_at: DateTime | None
    updated_at: DateTime | None
    event: str = Field(description="The docs' name of event_type")
    error: str | None = Field(description="The docs' name of error_message")


class ActionOut(ExecutionOut):
    """The execution recorded for an answer, and the uid that was answered."""

    execution: str


class AgentTestOut(BaseModel):
    """What ``POST /agents/{uid}/test/`` answers."""

    success: bool
    message: str
    status_code: int | None = Field(description="The callback's HTTP status (null: no answer, or a pull agent)")
    latency_ms: float


def agent_json(agent: Agent) -> dict[str, Any]:
    """The SDK's ``Agent``: lists never null."""
    out = jsonable(agent)
    out.update(events=list(agent.events or []), task_types=list(agent.task_types or []))
    return out


def execution_json(execution: AgentExecution) -> dict[str, Any]:
    """The SDK's ``AgentExecution`` (``event_payload`` always an object) plus the docs' ``event`` and ``error``."""
    out = jsonable(execution)
    out.update(event_payload=out.get("event_payload") or {}, event=execution.event, error=execution.error)
    return out


def split_types(task_types: str | None) -> list[str]:
    """``a,b`` (avala-agents' form) as a list; None or empty: []."""
    return [t.strip() for t in (task_types or "").split(",") if t.strip()]


@router.get("/agents/", response_model=Page[AgentOut], responses=errors(400), summary="List agents")
def list_agents(request: Request, limit: int | None = LIMIT, cursor: str | None = CURSOR) -> dict:
    return page_json(request, client_of(request).agents.list(limit=limit, cursor=cursor), agent_json)


@router.post(
    "/agents/",
    status_code=201,
    response_model=AgentOut,
    responses={200: {"model": AgentOut, "description": "An agent of that name, updated"}, **errors(400, 404)},
    summary="Create an agent, or update the agent of that name",
)
def create_agent(request: Request, response: Response, body: AgentCreate) -> dict:
    agent, created = client_of(request).agents.register(**body.model_dump())
    if not created:
        response.status_code = 200
    return agent_json(agent)


@router.get("/agents/{uid}/", response_model=AgentOut, responses=errors(404), summary="Get an agent")
def get_agent(request: Request, uid: str) -> dict:
    return agent_json(client_of(request).agents.get(uid))


@router.patch("/agents/{uid}/", response_model=AgentOut, responses=errors(400, 404), summary="Update an agent")
def update_agent(request: Request, uid: str, body: AgentUpdate | None = None) -> dict:
    body = body or AgentUpdate()
    return agent_json(client_of(request).agents.update(uid, **body.model_dump()))


@router.delete("/agents/{uid}/", status_code=204, responses=errors(404), summary="Delete an agent")
def delete_agent(request: Request, uid: str) -> Response:
    client_of(request).agents.delete(uid)
    return no_content()


@router.post("/agents/{uid}/test/", response_model=AgentTestOut, responses=errors(404), summary="Send a test event now")
def test_agent(request: Request, uid: str) -> dict:
    """``success``, ``message`` (what happened, or why it failed), ``status_code`` and ``latency_ms``."""
    return client_of(request).agents.test(uid)


@router.get(
    "/agents/{uid}/executions/",
    response_model=Page[ExecutionOut],
    responses=errors(400, 404),
    summary="List an agent's executions (status=pending leases them)",
)
def list_executions(
    request: Request,
    uid: str,
    status: str | None = Query(None, description="pending: lease pending executions; else only those of it"),
    project: str | None = Query(None, description="Only executions of this project's events"),
    task_types: str | None = Query(None, description="Comma-separated model types: only events concerning one"),
    limit: int | None = LIMIT,
    cursor: str | None = CURSOR,
) -> dict:
    agents = client_of(request).agents
    types = split_types(task_types)
    if status == "pending":
        leased = agents.lease_executions(
            uid, limit=limit or POLL_LIMIT, lease_seconds=POLL_LEASE_SECONDS, project=project, task_types=types
        )
        return {"results": [execution_json(e) for e in leased], "next": None, "previous": None}
    page = agents.list_executions(uid, status=status, project=project, task_types=types, limit=limit, cursor=cursor)
    return page_json(request, page, execution_json)


@router.post(
    "/agent-actions/",
    status_code=201,
    response_model=ActionOut,
    responses=errors(400, 404, 409),
    summary="Answer a leased execution (once)",
)
def answer_execution(request: Request, body: AgentAction) -> dict:
    execution = client_of(request).agents.respond(body.execution, action=body.action, reason=body.reason)
    return {**execution_json(execution), "execution": body.execution}
