"""Webhooks over HTTP, through the app's client (``client.webhooks``, ``client.webhook_deliveries``):
``/webhooks/`` list and create (201, with the secret shown once), ``/webhooks/{uid}/`` get, ``PATCH`` and
``DELETE`` (204), ``POST /webhooks/{uid}/test/`` (no body: sends a signed test event now and answers
``{success, message, status_code, latency_ms}``), ``GET /webhook-deliveries/?subscription=`` and
``/webhook-deliveries/{uid}/``. A target_url the callback URL policy refuses is a 400 naming the rule."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from avala_infer.client.webhooks import Webhook, WebhookDelivery
from avala_infer.server.pages import CURSOR, LIMIT, client_of, jsonable, no_content, page_json
from avala_infer.server.schemas import DateTime, Page, errors

router = APIRouter(tags=["webhooks"])


class WebhookCreate(BaseModel):
    """The body of ``POST /webhooks/``."""

    model_config = ConfigDict(extra="forbid")

    target_url: str = Field(description="The http(s) URL events are POSTed to (the callback URL policy applies)")
    events: list[str] = Field(description="Event types, e.g. task.completed")
    is_active: bool | None = Field(None, description="Deliver events (default true)")
    secret: str | None = Field(None, description="The HMAC-SHA256 signing key (generated unless given)")


class WebhookUpdate(BaseModel):
    """The body of ``PATCH /webhooks/{uid}/``: the fields to change."""

    model_config = ConfigDict(extra="forbid")

    target_url: str | None = None
    events: list[str] | None = None
    is_active: bool | None = None
    secret: str | None = Field(None, description="A new signing key, used from the next delivery on")


class WebhookOut(BaseModel):
    """A subscription: the SDK's ``Webhook`` fields (``secret`` only in the answer to its creation)."""

    uid: str
    target_url: str
    events: list[str]
    is_active: bool
    secret: str | None
    created_at: DateTime | None
    updated_at: DateTime | None


class WebhookDeliveryOut(BaseModel):
    """A delivery: the SDK's ``WebhookDelivery`` fields, ours (``error_message``) and the docs' ``event``."""

    uid: str
    subscription: str = Field(description="The webhook's uid")
    event_type: str
    payload: dict[str, Any] | None = Field(description="The event's body, as sent")
    response_status: int | None = Field(description="The last attempt's HTTP status (null: no answer yet)")
    response_body: str | None = Field(description="An excerpt of the last attempt's answer")
    attempts: int
    next_retry_at: DateTime | None = Field(description="When the next attempt is due, while retrying")
    status: str = Field(description="pending, retrying, sending, delivered or failed")
    error_message: str | None = Field(description="Why the last attempt failed")
    event: str = Field(description="The docs' name of event_type")
    created_at: DateTime | None
    updated_at: DateTime | None


class WebhookTestOut(BaseModel):
    """What ``POST /webhooks/{uid}/test/`` answers."""

    success: bool
    message: str
    status_code: int | None = Field(description="The target's HTTP status (null: no answer)")
    latency_ms: float


def webhook_json(webhook: Webhook) -> dict[str, Any]:
    return {**jsonable(webhook), "events": list(webhook.events or []), "is_active": bool(webhook.is_active)}


def delivery_json(delivery: WebhookDelivery) -> dict[str, Any]:
    return {**jsonable(delivery), "event": delivery.event_type}


@router.get("/webhooks/", response_model=Page[WebhookOut], responses=errors(400), summary="List webhooks")
def list_webhooks(request: Request, limit: int | None = LIMIT, cursor: str | None = CURSOR) -> dict:
    return page_json(request, client_of(request).webhooks.list(limit=limit, cursor=cursor), webhook_json)


@router.post(
    "/webhooks/", status_code=201, response_model=WebhookOut, responses=errors(400), summary="Create a webhook"
)
def create_webhook(request: Request, body: WebhookCreate) -> dict:
    webhook = client_of(request).webhooks.create(
        target_url=body.target_url, events=body.events, is_active=body.is_active, secret=body.secret
    )
    return webhook_json(webhook)


@router.get("/webhooks/{uid}/", response_model=WebhookOut, responses=errors(404), summary="Get a webhook")
def get_webhook(request: Request, uid: str) -> dict:
    return webhook_json(client_of(request).webhooks.get(uid))


@router.patch("/webhooks/{uid}/", response_model=WebhookOut, responses=errors(400, 404), summary="Update a webhook")
def update_webhook(request: Request, uid: str, body: WebhookUpdate | None = None) -> dict:
    body = body or WebhookUpdate()
    webhook = client_of(request).webhooks.update(
        uid, target_url=body.target_url, events=body.events, is_active=body.is_active, secret=body.secret
    )
    return webhook_json(webhook)


@router.delete("/webhooks/{uid}/", status_code=204, responses=errors(404), summary="Delete a webhook")
def delete_webhook(request: Request, uid: str) -> Response:
    """Delete the webhook (events not yet sent to it are dropped); 204 with no body."""
    client_of(request).webhooks.delete(uid)
    return no_content()


@router.post("/webhooks/{uid}/test/", response_model=WebhookTestOut, responses=errors(404), summary="Send a test event")
def test_webhook(request: Request, uid: str) -> dict:
    """POST a signed ``agent.test`` event to the webhook's target_url now and say how it went."""
    return client_of(request).webhooks.test(uid)


@router.get(
    "/webhook-deliveries/",
    response_model=Page[WebhookDeliveryOut],
    responses=errors(400, 404),
    summary="List webhook deliveries",
)
def list_deliveries(
    request: Request,
    subscription: str | None = Query(None, description="Only this webhook's deliveries"),
    limit: int | None = LIMIT,
    cursor: str | None = CURSOR,
) -> dict:
    page = client_of(request).webhook_deliveries.list(subscription=subscription, limit=limit, cursor=cursor)
    return page_json(request, page, delivery_json)


@router.get(
    "/webhook-deliveries/{uid}/",
    response_model=WebhookDeliveryOut,
    responses=errors(404),
    summary="Get a webhook delivery",
)
def get_delivery(request: Request, uid: str) -> dict:
    return delivery_json(client_of(request).webhook_deliveries.get(uid))
