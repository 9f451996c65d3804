"""Datasets (one per project) and their items, as the SDK reads them, and the items' files.

Paths: ``GET /datasets/``, ``/datasets/{uid}/``, ``/datasets/{owner}/{slug}/``, ``/datasets/{owner}/{slug}/items/``
and ``.../items/{item_uid}/``; an item's ``url`` is ``/media/items/{item_uid}/``, which streams that item's
imported file and nothing else (a text item's text when it has no file).
"""

from __future__ import annotations

import os
import stat
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from avala_infer.client.types import Dataset, DatasetItem
from avala_infer.errors import NotFoundError
from avala_infer.server.pages import CURSOR, LIMIT, client_of, jsonable, page_json

router = APIRouter(tags=["datasets"])


def dataset_json(dataset: Dataset) -> dict[str, Any]:
    """The SDK's ``Dataset`` fields (``status`` is ``created``: a local dataset is ready once made)."""
    return {**jsonable(dataset), "status": "created", "is_sequence": False}


def item_json(request: Request, dataset: Dataset, item: DatasetItem) -> dict[str, Any]:
    """The SDK's ``DatasetItem`` fields, ``url`` pointing at :func:`item_file`; the item's local path is not
    shown."""
    out = jsonable(item)
    out.pop("path", None)
    return {
        **out,
        "dataset_owner_name": dataset.owner_name,
        "dataset_slug": dataset.slug,
        "url": str(request.url_for("item_file", item_uid=item.uid)),
        "is_hidden": False,
        "metadata": {"size": item.size, "content_hash": item.content_hash},
    }


@router.get("/datasets/", summary="List datasets")
def list_datasets(
    request: Request,
    data_type: str | None = Query(None, description="image or text"),
    name: str | None = Query(None, description="Only datasets whose name contains this"),
    status: str | None = Query(None, description="Accepted for the SDK; every local dataset is created"),
    visibility: str | None = Query(None, description="Accepted for the SDK; every local dataset is private"),
    limit: int | None = LIMIT,
    cursor: str | None = CURSOR,
) -> dict:
    page = client_of(request).datasets.list(limit=limit, cursor=cursor)
    page.items = [
        d
        for d in page.items
        if (data_type is None or d.data_type == data_type)
        and (name is None or name.lower() in d.name.lower())
        and (status is None or status == "created")
    ]
    return page_json(request, page, dataset_json)


@router.get("/datasets/{uid}/", summary="Get a dataset")
def get_dataset(request: Request, uid: str) -> dict:
    return dataset_json(client_of(request).datasets.get(uid))


@router.get("/datasets/{owner}/{slug}/", summary="Get a dataset by owner and slug")
def get_dataset_by_slug(request: Request, owner: str, slug: str) -> dict:
    return dataset_json(client_of(request).datasets.get_by_slug(owner, slug))


@router.get("/datasets/{owner}/{slug}/items/", summary="List a dataset's items")
def list_items(request: Request, owner: str, slug: str, limit: int | None = LIMIT, cursor: str | None = CURSOR) -> dict:
    datasets = client_of(request).datasets
    dataset = datasets.get_by_slug(owner, slug)
    page = datasets.list_items(dataset.uid, limit=limit, cursor=cursor)
    return page_json(request, page, lambda item: item_json(request, dataset, item))


@router.get("/datasets/{owner}/{slug}/items/{item_uid}/", summary="Get a dataset item")
def get_item(request: Request, owner: str, slug: str, item_uid: str) -> dict:
    datasets = client_of(request).datasets
    item = datasets.get_item(owner, slug, item_uid)
    return item_json(request, datasets.get_by_slug(owner, slug), item)


@router.get("/media/items/{item_uid}/", name="item_file", summary="Download an item's file")
def item_file(request: Request, item_uid: str) -> Response:
    """The bytes of the file imported as item ``item_uid`` (the path the store recorded, resolved at import):
    nothing else is reachable here, and a path that is no longer a regular file, or that a symlink now
    redirects elsewhere, is a 404."""
    item = client_of(request).datasets.item(item_uid)
    if item.path is None:
        return Response((item.text or "").encode("utf-8"), media_type="text/plain; charset=utf-8")
    path = item.path
    try:
        info = os.lstat(path)
    except OSError:
        raise NotFoundError(
            f"item {item_uid!r}'s file {os.path.basename(path)!r} is gone from where it was imported"
        ) from None
    if not stat.S_ISREG(info.st_mode) or os.path.realpath(path) != path:
        raise NotFoundError(f"item {item_uid!r}'s file is no longer the regular file that was imported")
    return FileResponse(path, filename=os.path.basename(path))
