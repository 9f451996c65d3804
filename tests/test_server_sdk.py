"""Issue 12, first step: the official Avala SDK (``avala==0.10.0``), unmodified, reads projects, tasks, datasets,
items and the organization from a real ``avala_infer.server`` app served by uvicorn on 127.0.0.1, over a real
store of coco128 images imported through the local client. No mocks: the SDK's own transport, models and error
mapping, plus plain httpx where the SDK has no call (the item's file, the raw error bodies)."""

from __future__ import annotations

import concurrent.futures

import pytest

pytest.importorskip("fastapi", reason="the server extra: pip install -e '.[server]'")
avala = pytest.importorskip("avala", reason="the official SDK is a test extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx")

from avala_infer import Avala  # noqa: E402
from avala_infer.server.app import create_app  # noqa: E402
from tests.server_helpers import KEY, Served, ThreadServer, avala_cli, make_store  # noqa: E402

N_IMAGES = 5


@pytest.fixture(scope="module")
def served(tmp_path_factory, val_images):
    images = sorted(val_images.glob("*.jpg"))[:N_IMAGES]
    home = tmp_path_factory.mktemp("server") / "home"
    project = make_store(home, images)
    server = ThreadServer(create_app(home, [KEY])).start()
    try:
        yield Served(home=home, port=server.port, project=project, images=images)
    finally:
        server.stop()


@pytest.fixture
def own_home(tmp_path):
    """A home of the test's own with a server over it (for tests that add to the store): (home, Served-like)."""
    home = tmp_path / "own-home"
    Avala(home=home, worker=False).close()
    server = ThreadServer(create_app(home, [KEY])).start()
    try:
        yield home, Served(home=home, port=server.port, project="", images=[])
    finally:
        server.stop()


def raw(served, path: str, key: str | None = KEY) -> httpx.Response:
    headers = {} if key is None else {"X-Avala-Api-Key": key}
    return httpx.get(served.base_url + path, headers=headers, follow_redirects=False, timeout=30)


def test_projects_list_and_get(sdk, served):
    page = sdk.projects.list()
    assert [p.uid for p in page.items] == [served.project]
    assert page.items[0].name == "streets"
    assert not page.has_more
    listed = raw(served, "/users/me/projects/").json()["results"][0]
    assert listed == raw(served, f"/users/me/projects/{served.project}/").json()  # a list shows what a get does
    assert listed["task_count"] == N_IMAGES and listed["dataset"]
    project = sdk.projects.get(served.project)
    assert (project.uid, project.name, project.status) == (served.project, "streets", "active")
    assert project.created_at is not None and project.created_at.utcoffset().total_seconds() == 0
    assert raw(served, f"/users/me/projects/{served.project}/").json()["created_at"].endswith("Z")


def test_tasks_page_through_the_cursor_each_once_in_order(sdk, served):
    with Avala(home=served.home, worker=False) as local:
        expected = [t.uid for t in local.tasks.list(project=served.project)]
    assert len(expected) == N_IMAGES
    seen, cursor, pages = [], None, 0
    while True:
        page = sdk.tasks.list(project=served.project, limit=2, cursor=cursor)
        pages += 1
        assert len(page.items) <= 2
        seen += [t.uid for t in page.items]
        if not page.has_more:
            break
        cursor = page.next_cursor
    assert seen == expected
    assert pages == 3
    assert [t.uid for t in sdk.tasks.list(status="pending").items] == expected
    assert sdk.tasks.list(status="completed").items == []


def test_task_get(sdk, served):
    first = sdk.tasks.list(limit=1).items[0]
    task = sdk.tasks.get(first.uid)
    assert (task.uid, task.project, task.type, task.status) == (first.uid, served.project, "image", "pending")
    assert task.name == served.images[0].name


def test_datasets_list_get_items_and_item(sdk, served):
    datasets = sdk.datasets.list().items
    assert len(datasets) == 1
    dataset = datasets[0]
    assert (dataset.owner_name, dataset.item_count, dataset.data_type) == ("local", N_IMAGES, "image")
    assert dataset.slug
    assert sdk.datasets.get(dataset.uid).slug == dataset.slug
    assert sdk.datasets.get_by_slug("local", dataset.slug).uid == dataset.uid
    assert [d.uid for d in sdk.datasets.list(name="STREE", data_type="image").items] == [dataset.uid]
    assert sdk.datasets.list(data_type="text").items == []

    items = sdk.datasets.list_items("local", dataset.slug, limit=3)
    assert len(items.items) == 3 and items.has_more
    rest = sdk.datasets.list_items("local", dataset.slug, limit=3, cursor=items.next_cursor)
    every = items.items + rest.items
    assert [i.key for i in every] == [p.name for p in served.images]
    assert all(isinstance(i.id, int) for i in every) and len({i.id for i in every}) == N_IMAGES
    assert all(i.dataset == dataset.uid and i.dataset_slug == dataset.slug for i in every)

    item = sdk.datasets.get_item("local", dataset.slug, every[1].uid)
    assert (item.uid, item.id, item.key) == (every[1].uid, every[1].id, served.images[1].name)
    assert item.dataset_owner_name == "local"


def test_an_items_url_serves_its_file_with_the_key_only(sdk, served):
    dataset = sdk.datasets.list().items[0]
    item = sdk.datasets.list_items("local", dataset.slug, limit=1).items[0]
    assert item.url.startswith(served.base_url + "/")
    answer = httpx.get(item.url, headers={"X-Avala-Api-Key": KEY}, timeout=30)
    assert answer.status_code == 200
    assert answer.content == served.images[0].read_bytes()
    assert answer.headers["content-type"] == "image/jpeg"
    refused = httpx.get(item.url, timeout=30)
    assert refused.status_code == 401
    assert isinstance(refused.json()["detail"], str)
    assert httpx.get(item.url, headers={"X-Avala-Api-Key": "wrong"}, timeout=30).status_code == 401


@pytest.mark.parametrize(
    "path",
    [
        "/media/items/item_nope/",
        "/media/items/..%2F..%2F..%2Fetc%2Fpasswd/",
        "/media/items/%2e%2e/",
        "/media/items/../../../etc/passwd/",
    ],
)
def test_the_media_route_serves_no_other_file(served, path):
    answer = raw(served, path)
    assert answer.status_code == 404, answer.text
    assert isinstance(answer.json()["detail"], str)
    assert b"root:" not in answer.content


def test_a_file_replaced_by_a_symlink_is_not_served(tmp_path, own_home):
    """An imported file later swapped for a symlink to another file: the server refuses it (404)."""
    from PIL import Image

    own = tmp_path / "own.png"
    Image.new("RGB", (8, 8), "red").save(own)
    home, served = own_home
    with Avala(home=home, worker=False) as local:
        project = local.projects.create("swapped", models={"object_detection": "yolo11n"})
        local.projects.import_items(project.uid, [str(own)])
        item = local.datasets.list_items(local.projects.get(project.uid).dataset).items[0]
    url = f"/media/items/{item.uid}/"
    assert raw(served, url).content == own.read_bytes()
    secret = tmp_path / "secret.txt"
    secret.write_text("not an item")
    own.unlink()
    own.symlink_to(secret)
    answer = raw(served, url)
    assert answer.status_code == 404
    assert b"not an item" not in answer.content


def test_a_text_items_url_serves_its_text(own_home):
    from avala_infer.types import Text

    home, served = own_home
    with Avala(home=home, worker=False) as local:
        project = local.projects.create("notes", data_type="text")
        local.projects.import_items(project.uid, [Text("a short note")])
        item = local.datasets.list_items(local.projects.get(project.uid).dataset).items[0]
    answer = raw(served, f"/media/items/{item.uid}/")
    assert answer.status_code == 200
    assert answer.text == "a short note" and answer.headers["content-type"].startswith("text/plain")


def test_a_wrong_key_is_the_sdks_authentication_error(served, monkeypatch):
    monkeypatch.setenv("AVALA_ALLOW_INSECURE_BASE_URL", "true")
    with avala.Client(api_key="wrong-key", base_url=served.base_url) as client:
        with pytest.raises(avala.errors.AuthenticationError, match="invalid API key"):
            client.projects.list()
    missing = raw(served, "/users/me/projects/", key=None)
    assert missing.status_code == 401
    assert "X-Avala-Api-Key" in missing.json()["detail"]


def test_an_unknown_uid_is_not_found_with_our_message(sdk):
    with pytest.raises(avala.errors.NotFoundError, match="no task 'task_nope'"):
        sdk.tasks.get("task_nope")
    with pytest.raises(avala.errors.NotFoundError, match="no project 'proj_nope'"):
        sdk.projects.get("proj_nope")
    with pytest.raises(avala.errors.NotFoundError, match="every local dataset's owner is 'local'"):
        sdk.datasets.get_by_slug("someone", "x")


def test_bad_parameters_answer_a_string_detail(sdk, served):
    with pytest.raises(avala.errors.ValidationError, match="task status must be one of"):
        sdk.tasks.list(status="nope")
    answer = raw(served, "/tasks/?limit=abc")
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith("query parameter 'limit'")
    bad_cursor = raw(served, "/tasks/?cursor=zz")
    assert bad_cursor.status_code == 400 and "bad cursor" in bad_cursor.json()["detail"]


def test_a_path_without_its_trailing_slash_is_a_404_not_a_redirect(served):
    for path in ("/tasks", "/users/me/projects", "/organizations"):
        answer = raw(served, path)
        assert answer.status_code == 404, (path, answer.status_code)
        assert "location" not in answer.headers
        assert isinstance(answer.json()["detail"], str)


def test_organizations_and_me_for_avala_configure(sdk, served):
    organizations = sdk.organizations.list().items
    assert [(o.slug, o.name) for o in organizations] == [("local", "Local")]
    assert sdk.organizations.get("local").uid == organizations[0].uid
    with pytest.raises(avala.errors.NotFoundError):
        sdk.organizations.get("elsewhere")
    me = raw(served, "/users/me/").json()
    assert me["username"] == "local" and me["uid"]


def test_twenty_concurrent_clients_read_without_errors(served, monkeypatch):
    monkeypatch.setenv("AVALA_ALLOW_INSECURE_BASE_URL", "true")

    def reader(n: int) -> int:
        with avala.Client(api_key=KEY, base_url=served.base_url) as client:
            for _ in range(5):
                assert len(client.tasks.list(limit=2).items) == 2
                assert client.projects.get(served.project).name == "streets"
                assert client.datasets.list().items[0].item_count == N_IMAGES
        return n

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        assert sorted(pool.map(reader, range(20))) == list(range(20))


def test_the_avala_cli_lists_our_project(served):
    done = avala_cli(served, "-o", "json", "projects", "list")
    assert done.returncode == 0, done.stdout + done.stderr
    assert served.project in done.stdout and "streets" in done.stdout


def test_avala_configure_finds_the_local_organization(served):
    done = avala_cli(served, "configure", stdin=f"{KEY}\n{served.base_url}\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Organization: Local" in done.stdout
