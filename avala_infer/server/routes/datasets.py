"""Datasets (one per project) and their items, as the SDK reads them, and the items' files.

Paths: ``GET /datasets/``, ``/datasets/{uid}/``, ``/datasets/{owner}/{slug}/``, ``/datasets/{owner}/{slug}/items/``
and ``.../items/{item_uid}/``; an item's ``url`` is ``/media/items/{item_uid}/``, which streams that item's
imported file and nothing else (a text item's text when it has no file).
"""

from __future__ import annotations

import errno
import mimetypes
import os
import stat
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from avala_infer.client.types import Dataset, DatasetItem
from avala_infer.errors import NotFoundError
from avala_infer.server.pages import CURSOR, LIMIT, client_of, jsonable, page_json
from avala_infer.server.schemas import Dataset as DatasetOut
from avala_infer.server.schemas import DatasetItem as DatasetItemOut
from avala_infer.server.schemas import Page, errors

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


@router.get("/datasets/", response_model=Page[DatasetOut], responses=errors(400), summary="List datasets")
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


@router.get("/datasets/{uid}/", response_model=DatasetOut, responses=errors(404), summary="Get a dataset")
def get_dataset(request: Request, uid: str) -> dict:
    return dataset_json(client_of(request).datasets.get(uid))


@router.get(
    "/datasets/{owner}/{slug}/",
    response_model=DatasetOut,
    responses=errors(404),
    summary="Get a dataset by owner and slug",
)
def get_dataset_by_slug(request: Request, owner: str, slug: str) -> dict:
    return dataset_json(client_of(request).datasets.get_by_slug(owner, slug))


@router.get(
    "/datasets/{owner}/{slug}/items/",
    response_model=Page[DatasetItemOut],
    responses=errors(400, 404),
    summary="List a dataset's items",
)
def list_items(request: Request, owner: str, slug: str, limit: int | None = LIMIT, cursor: str | None = CURSOR) -> dict:
    datasets = client_of(request).datasets
    dataset = datasets.get_by_slug(owner, slug)
    page = datasets.list_items(dataset.uid, limit=limit, cursor=cursor)
    return page_json(request, page, lambda item: item_json(request, dataset, item))


@router.get(
    "/datasets/{owner}/{slug}/items/{item_uid}/",
    response_model=DatasetItemOut,
    responses=errors(404),
    summary="Get a dataset item",
)
def get_item(request: Request, owner: str, slug: str, item_uid: str) -> dict:
    datasets = client_of(request).datasets
    item = datasets.get_item(owner, slug, item_uid)
    return item_json(request, datasets.get_by_slug(owner, slug), item)


@router.get(
    "/media/items/{item_uid}/",
    name="item_file",
    response_class=Response,
    responses={
        200: {"description": "The file's bytes (its own media type), or a text item's text", "content": {"*/*": {}}},
        **errors(404),
    },
    summary="Download an item's file",
)
def item_file(request: Request, item_uid: str) -> Response:
    """The bytes of the file imported as item ``item_uid`` (the path the store recorded, resolved at import):
    nothing else is reachable here. The file is opened once, one path component at a time without following
    a symlink (:func:`open_imported`), and that open file is what is sent: a path that is no longer a regular
    file, or that a symlink now redirects elsewhere, is a 404, even when it is swapped while the request
    runs."""
    item = client_of(request).datasets.item(item_uid)
    if item.path is None:
        return Response((item.text or "").encode("utf-8"), media_type="text/plain; charset=utf-8")
    name = os.path.basename(item.path)
    try:
        handle, size = open_imported(item.path)
    except FileNotFoundError:
        raise NotFoundError(f"item {item_uid!r}'s file {name!r} is gone from where it was imported") from None
    except OSError:
        raise NotFoundError(f"item {item_uid!r}'s file is no longer the regular file that was imported") from None
    quoted = quote(name)
    disposition = f"attachment; filename*=utf-8''{quoted}" if quoted != name else f'attachment; filename="{name}"'
    return StreamingResponse(
        _chunks(handle),
        media_type=mimetypes.guess_type(name)[0] or "application/octet-stream",
        headers={"Content-Length": str(size), "Content-Disposition": disposition},
    )


def open_imported(path: str) -> tuple[BinaryIO, int]:
    """The regular file at the absolute, real ``path`` opened for reading, and its size. Each directory of the
    path is opened relative to the one before with ``O_NOFOLLOW``, then the file (``O_NONBLOCK``: a FIFO does not
    hang), so a symlink anywhere in the path is refused (``OSError``), whenever it was put there; a path that
    is not absolute and normalised, or a file that is not a regular file, is an ``OSError`` too."""
    parts = path.split(os.sep)
    if not os.path.isabs(path) or os.path.normpath(path) != path or any(p in (".", "..") for p in parts):
        raise OSError(errno.EINVAL, "not an absolute, normalised path", path)
    nofollow = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    if os.open not in os.supports_dir_fd:  # no openat (Windows): check the path, then open it
        if os.path.realpath(path) != path:
            raise OSError(errno.ELOOP, "a symlink in the path", path)
        fd = os.open(path, nofollow | getattr(os, "O_BINARY", 0))
        return _regular(fd, path)
    folder = os.open(os.sep, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for part in parts[1:-1]:
            inner = os.open(part, nofollow | getattr(os, "O_DIRECTORY", 0), dir_fd=folder)
            os.close(folder)
            folder = inner
        fd = os.open(parts[-1], nofollow | getattr(os, "O_NONBLOCK", 0), dir_fd=folder)
    finally:
        os.close(folder)
    return _regular(fd, path)


def _regular(fd: int, path: str) -> tuple[BinaryIO, int]:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    return os.fdopen(fd, "rb"), info.st_size


def _chunks(handle: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    """The open file's bytes in blocks (Starlette reads a sync iterator on its threadpool), closed at the end."""
    with handle:
        while block := handle.read(size):
            yield block
