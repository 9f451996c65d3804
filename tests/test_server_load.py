"""Issue 12, item 5: 20 official-SDK clients at once, and pagination through the SDK. Twenty threads, each with
its own ``avala.Client``, read projects, tasks, datasets, items and jobs from one real server (uvicorn on
127.0.0.1 over a store of coco128 images, no job worker) in a mixed, seeded order: no error, and every answer is
the one the local client gives for the same store. Tasks, items and jobs are then walked page by page with
``limit`` through the SDK's ``CursorPage`` (``next_cursor`` back as ``cursor``): each object once, in order."""

from __future__ import annotations

import concurrent.futures
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

pytest.importorskip("fastapi", reason="the server extra: pip install -e '.[server]'")
avala = pytest.importorskip("avala", reason="the official SDK is a test extra: pip install -e '.[test]'")

from avala_infer import Avala  # noqa: E402
from avala_infer.server.app import create_app  # noqa: E402
from tests.server_helpers import KEY, ThreadServer, make_store  # noqa: E402

N_IMAGES = 13  # a prime: no page size divides it, so every walk ends on a short page
N_JOBS = 7
CLIENTS = 20
CALLS_PER_CLIENT = 30


@dataclass
class Expected:
    """What the local client says the store holds (the answers every SDK call must match)."""

    base_url: str
    project: str
    project_name: str
    dataset: str
    slug: str
    tasks: list[str]  # in list order
    task_names: dict[str, str]
    items: list[str]
    item_keys: dict[str, str]
    jobs: list[str]
    job_status: dict[str, str]


@pytest.fixture(scope="module")
def served(tmp_path_factory, val_images):
    home = tmp_path_factory.mktemp("load") / "home"
    project = make_store(home, sorted(val_images.glob("*.jpg"))[:N_IMAGES])
    with Avala(home=home, worker=False) as local:
        for n in range(N_JOBS):  # pending jobs (no worker runs them), every third one cancelled
            job = local.auto_label_jobs.create(project, confidence_threshold=0.2 + n / 100)
            if n % 3 == 0:
                local.auto_label_jobs.cancel(job.uid)
        dataset = local.datasets.get(local.projects.get(project).dataset)
        tasks = list(local.tasks.list(project=project, limit=1000))
        items = list(local.datasets.list_items(dataset.uid, limit=1000))
        jobs = list(local.auto_label_jobs.list(project=project, limit=1000))
    server = ThreadServer(create_app(home, [KEY], worker=False)).start()
    try:
        yield Expected(
            base_url=f"http://127.0.0.1:{server.port}/api/v1",
            project=project,
            project_name="streets",
            dataset=dataset.uid,
            slug=dataset.slug,
            tasks=[t.uid for t in tasks],
            task_names={t.uid: t.name for t in tasks},
            items=[i.uid for i in items],
            item_keys={i.uid: i.key for i in items},
            jobs=[j.uid for j in jobs],
            job_status={j.uid: j.status for j in jobs},
        )
    finally:
        server.stop()


@pytest.fixture
def sdk_env(monkeypatch):
    monkeypatch.setenv("AVALA_ALLOW_INSECURE_BASE_URL", "true")


def walk(list_page: Callable, limit: int) -> tuple[list[str], int]:
    """Every uid of a listing, page by page through the SDK's cursor; (uids, pages)."""
    uids, cursor, pages = [], None, 0
    while True:
        page = list_page(limit=limit, cursor=cursor)
        pages += 1
        assert 0 < len(page.items) <= limit or (not page.items and not page.has_more)
        uids += [obj.uid for obj in page.items]
        if not page.has_more:
            return uids, pages
        cursor = page.next_cursor
        assert pages <= 1000, "the cursor never ends"


def reads(client, want: Expected) -> list[Callable[[random.Random], None]]:
    """The mixed reads: each asks the server one thing and checks the answer against the local client's."""

    def project_get(rng):
        project = client.projects.get(want.project)
        assert (project.uid, project.name) == (want.project, want.project_name)

    def projects_list(rng):
        assert [p.uid for p in client.projects.list().items] == [want.project]

    def task_get(rng):
        uid = rng.choice(want.tasks)
        task = client.tasks.get(uid)
        assert (task.uid, task.name, task.project) == (uid, want.task_names[uid], want.project)

    def tasks_page(rng):
        limit = rng.randint(1, 6)
        page = client.tasks.list(project=want.project, limit=limit)
        assert [t.uid for t in page.items] == want.tasks[:limit] and page.has_more == (limit < len(want.tasks))

    def tasks_walk(rng):
        assert walk(lambda **kw: client.tasks.list(project=want.project, **kw), rng.randint(3, 6))[0] == want.tasks

    def dataset_get(rng):
        dataset = client.datasets.get(want.dataset)
        assert (dataset.slug, dataset.item_count) == (want.slug, len(want.items))

    def datasets_list(rng):
        assert [d.uid for d in client.datasets.list().items] == [want.dataset]

    def item_get(rng):
        uid = rng.choice(want.items)
        item = client.datasets.get_item("local", want.slug, uid)
        assert (item.uid, item.key, item.dataset) == (uid, want.item_keys[uid], want.dataset)

    def items_page(rng):
        limit = rng.randint(1, 6)
        page = client.datasets.list_items("local", want.slug, limit=limit)
        assert [i.uid for i in page.items] == want.items[:limit]

    def job_get(rng):
        uid = rng.choice(want.jobs)
        job = client.auto_label_jobs.get(uid)
        assert (job.uid, job.status, job.processed_items) == (uid, want.job_status[uid], 0)

    def jobs_list(rng):
        assert [j.uid for j in client.auto_label_jobs.list(project=want.project).items] == want.jobs

    return [
        project_get,
        projects_list,
        task_get,
        tasks_page,
        tasks_walk,
        dataset_get,
        datasets_list,
        item_get,
        items_page,
        job_get,
        jobs_list,
    ]


def test_twenty_sdk_clients_at_once_read_the_right_answers(served, sdk_env, capsys):
    start = threading.Barrier(CLIENTS)

    def reader(n: int) -> dict[str, int]:
        rng = random.Random(1000 + n)  # seeded: the same mix every run
        done: dict[str, int] = {}
        with avala.Client(api_key=KEY, base_url=served.base_url) as client:
            calls = reads(client, served)
            start.wait(timeout=60)  # all twenty in flight together
            for _ in range(CALLS_PER_CLIENT):
                call = rng.choice(calls)
                call(rng)
                done[call.__name__] = done.get(call.__name__, 0) + 1
        return done

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(reader, range(CLIENTS)))  # re-raises the first failed assertion or SDK error
    elapsed = time.monotonic() - started
    total: dict[str, int] = {}
    for done in results:
        for name, count in done.items():
            total[name] = total.get(name, 0) + count
    assert sum(total.values()) == CLIENTS * CALLS_PER_CLIENT
    assert set(total) == {call.__name__ for call in reads(None, served)}  # every kind of read ran
    with capsys.disabled():
        print(f"\n{CLIENTS} SDK clients, {sum(total.values())} reads, no error, in {elapsed:.1f} s: {total}")


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_tasks_walk_every_page_each_once_in_order(served, sdk_env, limit):
    with avala.Client(api_key=KEY, base_url=served.base_url) as client:
        uids, pages = walk(lambda **kw: client.tasks.list(project=served.project, **kw), limit)
    assert uids == served.tasks and len(set(uids)) == N_IMAGES
    assert pages == math.ceil(N_IMAGES / limit)


@pytest.mark.parametrize("limit", [1, 3, 4])
def test_items_walk_every_page_each_once_in_order(served, sdk_env, limit):
    with avala.Client(api_key=KEY, base_url=served.base_url) as client:
        uids, pages = walk(lambda **kw: client.datasets.list_items("local", served.slug, **kw), limit)
    assert uids == served.items and len(set(uids)) == N_IMAGES
    assert pages == math.ceil(N_IMAGES / limit)


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_jobs_walk_every_page_each_once_in_order(served, sdk_env, limit):
    with avala.Client(api_key=KEY, base_url=served.base_url) as client:
        uids, pages = walk(lambda **kw: client.auto_label_jobs.list(project=served.project, **kw), limit)
    assert uids == served.jobs and len(set(uids)) == N_JOBS
    assert pages == math.ceil(N_JOBS / limit)
