"""Inference providers over HTTP, through the app's client: ``/inference-providers/`` CRUD (``PATCH`` changes the
fields sent; ``DELETE`` answers 204) and ``POST /inference-providers/{uid}/test/``, which loads the provider's
model and predicts on one sample (``{"success", "message", ...}``; a model that cannot load is
``success: false``, not an error). A provider is a model of this host: ``config`` is ``{"model", "model_type"}``
(see ``avala_infer/client/providers.py``); ``provider_type`` is ``local`` or the Avala CLI's ``http``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from avala_infer.server.pages import CURSOR, LIMIT, client_of, jsonable, no_content, page_json
from avala_infer.server.schemas import DateTime, Page, errors

router = APIRouter(tags=["inference providers"])

CONFIG_HELP = 'The model: {"model": a model name, spec .yaml or weights file, "model_type": one of our six}'


class ProviderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The provider's name")
    config: dict[str, Any] = Field(description=CONFIG_HELP)
    provider_type: str | None = Field(None, description="local (default) or http")
    description: str | None = None
    is_active: bool | None = Field(None, description="Default true")
    project: str | None = Field(None, description="A project to serve this model for its model type")


class ProviderUpdate(BaseModel):
    """Only the fields sent change; ``description`` and ``project`` may be sent as null to clear them."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    config: dict[str, Any] | None = Field(None, description=CONFIG_HELP)
    provider_type: str | None = None
    description: str | None = None
    is_active: bool | None = None
    project: str | None = None


class ProviderOut(BaseModel):
    """An inference provider: the SDK's ``InferenceProvider`` fields and what its last test said."""

    uid: str
    name: str
    description: str | None
    provider_type: str | None = Field(description="local or http")
    config: dict[str, Any] = Field(description=CONFIG_HELP)
    is_active: bool
    project: str | None
    last_test_at: DateTime | None
    last_test_success: bool | None = Field(description="Null until tested")
    last_test_message: str | None
    created_at: DateTime | None
    updated_at: DateTime | None


class ProviderTestOut(BaseModel):
    """What a test found: ``success`` and ``message`` always; on success what was loaded and predicted."""

    success: bool
    message: str
    provider: str
    model: str
    model_type: str
    last_test_at: DateTime | None
    last_test_success: bool
    model_name: str | None = Field(None, description="The spec's name of the model loaded")
    backend: str | None = None
    device: str | None = None
    sample: str | None = Field(None, description="What it predicted on")
    annotations: int | None = Field(None, description="How many annotations it predicted there")
    labels: list[str] = Field([], description="The first labels it predicted")
    load_seconds: float | None = None
    predict_ms: float | None = None


@router.post(
    "/inference-providers/",
    status_code=201,
    response_model=ProviderOut,
    responses=errors(400, 404),
    summary="Create an inference provider",
)
def create_provider(request: Request, body: ProviderCreate) -> dict:
    provider = client_of(request).inference_providers.create(
        name=body.name,
        config=body.config,
        provider_type=body.provider_type,
        description=body.description,
        is_active=body.is_active,
        project=body.project,
    )
    return jsonable(provider)


@router.get(
    "/inference-providers/", response_model=Page[ProviderOut], responses=errors(400), summary="List inference providers"
)
def list_providers(request: Request, limit: int | None = LIMIT, cursor: str | None = CURSOR) -> dict:
    return page_json(request, client_of(request).inference_providers.list(limit=limit, cursor=cursor))


@router.get(
    "/inference-providers/{uid}/",
    response_model=ProviderOut,
    responses=errors(404),
    summary="Get an inference provider",
)
def get_provider(request: Request, uid: str) -> dict:
    return jsonable(client_of(request).inference_providers.get(uid))


@router.patch(
    "/inference-providers/{uid}/",
    response_model=ProviderOut,
    responses=errors(400, 404),
    summary="Update an inference provider",
)
def update_provider(request: Request, uid: str, body: ProviderUpdate | None = None) -> dict:
    body = body or ProviderUpdate()
    clearable = {"description", "project"}
    changes = {
        name: getattr(body, name)
        for name in body.model_fields_set
        if getattr(body, name) is not None or name in clearable
    }
    return jsonable(client_of(request).inference_providers.update(uid, **changes))


@router.delete(
    "/inference-providers/{uid}/",
    status_code=204,
    response_class=Response,
    responses=errors(404),
    summary="Delete an inference provider",
)
def delete_provider(request: Request, uid: str) -> Response:
    client_of(request).inference_providers.delete(uid)
    return no_content()


@router.post(
    "/inference-providers/{uid}/test/",
    response_model=ProviderTestOut,
    responses=errors(404),
    summary="Load the provider's model and predict on one sample",
)
def test_provider(request: Request, uid: str) -> dict:
    return jsonable(client_of(request).inference_providers.test(uid))
