"""Issue 12 item 3, files: the server hands out only the files it imported (``/media/items/{uid}/``) and wrote
(``/media/exports/{uid}/``). Paths with ``..``, percent-encoded ``%2e%2e`` / ``%2f`` (and double-encoded) on the
media routes and on every other route never return a file from outside; an imported image replaced afterwards by
a symlink to a secret, by a directory, by a FIFO, or moved under a symlinked folder is a 404, not the secret's
bytes. Requests are sent through httpcore (httpx's transport) with the exact target bytes: httpx itself would
remove ``..`` segments before sending."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the server extra: pip install -e '.[server]'")
httpx = pytest.importorskip("httpx")
httpcore = pytest.importorskip("httpcore")

from fastapi.routing import APIRoute  # noqa: E402

from avala_infer import Avala  # noqa: E402
from avala_infer.server.app import create_app  # noqa: E402
from tests.server_helpers import KEY, ThreadServer, make_store  # noqa: E402

SECRET = b"TOP-SECRET-do-not-serve-7f3a9c"
PREFIX = "/api/v1"


def api_routes(app) -> list[tuple[str, str]]:
    """(method, path template) of every route of ``app`` under ``/api/v1`` that a router declares (FastAPI's
    ``APIRoute``; not the OpenAPI schema and docs page), read from the app itself: routes added later are in."""
    try:  # FastAPI >= 0.160 keeps included routers as such; this walks them
        from fastapi.routing import iter_route_contexts

        routes = [(c.path, c.methods, c.original_route) for c in iter_route_contexts(app.routes)]
    except ImportError:
        routes = [(r.path, getattr(r, "methods", None), r) for r in app.routes]
    return sorted(
        (method, path)
        for path, methods, route in routes
        if isinstance(route, APIRoute) and path.startswith(PREFIX + "/")
        for method in methods - {"HEAD"}
    )


def fill(path: str, value: str) -> str:
    """``path`` with each ``{param}`` replaced by ``value``."""
    return re.sub(r"\{[^}]+\}", lambda _: value, path)


@pytest.fixture
def site(tmp_path, val_images):
    """A store whose items are copies of three images in ``tmp/images`` (so the test may swap them), a secret file
    beside it, and a server over it: (server, home, {item uid: its file})."""
    folder = tmp_path / "images"
    folder.mkdir()
    images = []
    for image in sorted(val_images.glob("*.jpg"))[:3]:
        images.append(folder / image.name)
        shutil.copyfile(image, images[-1])
    (tmp_path / "secret.txt").write_bytes(SECRET)
    home = tmp_path / "home"
    project = make_store(home, images)
    (home / "api-key").write_bytes(SECRET)  # a secret inside the home too
    with Avala(home=home, worker=False) as local:
        dataset = next(d for d in local.datasets.list().items if d.project == project)
        items = {item.uid: item.path for item in local.datasets.list_items(dataset.uid).items}
    assert sorted(os.path.basename(p) for p in items.values()) == sorted(p.name for p in images)
    app = create_app(home, [KEY], worker=False)
    server = ThreadServer(app).start()
    server.app = app
    try:
        yield server, home, items
    finally:
        server.stop()


def send(port: int, target: bytes, method: bytes = b"GET") -> tuple[int, bytes]:
    """``method target`` sent as is (no normalisation) with the key; (status, body)."""
    url = httpcore.URL(scheme=b"http", host=b"127.0.0.1", port=port, target=target)
    answer = httpcore.request(method, url, headers=[(b"X-Avala-Api-Key", KEY.encode())])
    return answer.status, answer.content


def assert_nothing_leaked(status: int, body: bytes, home) -> None:
    assert status in (400, 404, 405), (status, body[:200])
    assert SECRET not in body
    assert b"SQLite format 3" not in body


TRAVERSALS = [
    "../../../../secret.txt",
    "..%2f..%2f..%2f..%2fsecret.txt",
    "%2e%2e/%2e%2e/%2e%2e/%2e%2e/secret.txt",
    "%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
    "%252e%252e%252f%252e%252e%252fsecret.txt",
    "..%5c..%5c..%5csecret.txt",
    "%2fetc%2fpasswd",
    "..",
    "%2e%2e",
    "....//....//secret.txt",
]


@pytest.mark.parametrize("media", ["items", "exports"])
def test_traversal_in_media_paths_never_reaches_a_file_outside(site, media):
    server, home, items = site
    some_item = next(iter(items))
    for payload in TRAVERSALS:
        for target in (
            f"{PREFIX}/media/{media}/{payload}/",
            f"{PREFIX}/media/{media}/{payload}",
            f"{PREFIX}/media/{media}/{some_item}/{payload}/",
            f"{PREFIX}/media/{media}/{some_item}/../../../../../home/api-key/",
            f"{PREFIX}/media/{media}/../../../avala-infer.db/",
        ):
            status, body = send(server.port, target.encode())
            assert_nothing_leaked(status, body, home)


def test_traversal_in_every_route_s_path_parameters_never_reaches_a_file(site):
    server, home, _ = site
    reads = [(m, p) for m, p in api_routes(server.app) if m == "GET" and "{" in p]
    assert len(reads) >= 8 and ("GET", PREFIX + "/media/items/{item_uid}/") in reads
    for method, path in reads:
        for payload in TRAVERSALS:
            status, body = send(server.port, fill(path, payload).encode(), method.encode())
            assert_nothing_leaked(status, body, home)


def test_the_item_file_is_served_as_imported(site):
    server, _, items = site
    uid, path = next(iter(items.items()))
    status, body = send(server.port, f"{PREFIX}/media/items/{uid}/".encode())
    assert status == 200
    with open(path, "rb") as handle:
        assert body == handle.read()


def item_answer(server, uid: str) -> tuple[int, bytes]:
    return send(server.port, f"{PREFIX}/media/items/{uid}/".encode())


def test_an_imported_file_replaced_by_a_symlink_to_a_secret_is_a_404(site, tmp_path):
    server, home, items = site
    uid, path = next(iter(items.items()))
    os.remove(path)
    os.symlink(tmp_path / "secret.txt", path)
    status, body = item_answer(server, uid)
    assert status == 404 and SECRET not in body
    assert isinstance(httpx.Response(status, content=body).json()["detail"], str)
    os.remove(path)
    os.symlink(home / "api-key", path)  # a file inside the home is no better
    status, body = item_answer(server, uid)
    assert status == 404 and SECRET not in body


def test_an_imported_file_replaced_by_a_directory_or_a_fifo_is_a_404(site):
    server, _, items = site
    (uid_dir, path_dir), (uid_fifo, path_fifo) = list(items.items())[:2]
    os.remove(path_dir)
    os.mkdir(path_dir)
    (__import__("pathlib").Path(path_dir) / "inner.jpg").write_bytes(SECRET)
    status, body = item_answer(server, uid_dir)
    assert status == 404 and SECRET not in body
    os.remove(path_fifo)
    os.mkfifo(path_fifo)  # opening it would block a thread forever
    status, body = item_answer(server, uid_fifo)
    assert status == 404


def test_an_imported_folder_swapped_for_a_symlink_to_elsewhere_is_a_404(site, tmp_path):
    server, _, items = site
    uid, path = next(iter(items.items()))
    folder = os.path.dirname(path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / os.path.basename(path)).write_bytes(SECRET)  # same name, other folder
    os.rename(folder, tmp_path / "images-moved")
    os.symlink(elsewhere, folder)
    status, body = item_answer(server, uid)
    assert status == 404 and SECRET not in body


@pytest.mark.slow
def test_a_file_swapped_for_a_symlink_while_requests_run_never_leaks(site, tmp_path):
    """The swap races the requests (the file flips between an image and a symlink to the secret): what is sent is
    the file the server opened, checked after opening, never the secret."""
    server, _, items = site
    uid, path = next(iter(items.items()))
    image = tmp_path / "image-copy"
    shutil.copyfile(path, image)
    done = threading.Event()

    def flip() -> None:
        while not done.is_set():
            shutil.copyfile(image, path + ".new")
            os.replace(path + ".new", path)
            os.symlink(tmp_path / "secret.txt", path + ".link")
            os.replace(path + ".link", path)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    statuses = []
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            status, body = item_answer(server, uid)
            statuses.append(status)
            assert SECRET not in body
    finally:
        done.set()
        flipper.join(timeout=10)
    assert len(statuses) > 20 and set(statuses) <= {200, 404}


def test_a_deleted_file_is_a_404_that_names_no_local_path(site):
    server, home, items = site
    uid, path = next(iter(items.items()))
    os.remove(path)
    status, body = item_answer(server, uid)
    assert status == 404
    detail = httpx.Response(status, content=body).json()["detail"]
    assert os.path.dirname(path) not in detail and str(home) not in detail
