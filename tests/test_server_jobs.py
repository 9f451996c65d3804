"""Issue 12, step 2: auto-label jobs over HTTP. The official Avala SDK (``avala==0.10.0``) and its ``avala``
CLI, unmodified, create, read, list and cancel jobs on a real ``avala_infer.server`` app served by uvicorn on
127.0.0.1; the app's client runs them (its worker thread) unless the app is made with ``worker=False``. A small
real model (the YOLO11n ONNX export at 640 px) over 4 coco128 images keeps a job short. No mocks."""

from __future__ import annotations

import json
import time

import psutil
import pytest

pytest.importorskip("fastapi", reason="the server extra: pip install -e '.[server]'")
avala = pytest.importorskip("avala", reason="the official SDK is a test extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx")

from avala_infer.server.app import create_app  # noqa: E402
from tests.jobs_helpers import make_project, val_images, write_spec  # noqa: E402
from tests.server_helpers import KEY, Served, ThreadServer, avala_cli, start_serve, stop  # noqa: E402

N_IMAGES = 4
DONE = ("completed", "failed", "cancelled")


def serve_project(root, *, worker: bool):
    """A home with a project of ``N_IMAGES`` images served by the fast YOLO11n spec, and a server over it."""
    images = val_images(N_IMAGES)
    home = root / "home"
    project = make_project(home, images, write_spec(root / "specs"), name="streets")
    server = ThreadServer(create_app(home, [KEY], worker=worker)).start()
    return server, Served(home=home, port=server.port, project=project, images=images)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server, served = serve_project(tmp_path_factory.mktemp("jobs"), worker=True)
    try:
        yield served
    finally:
        server.stop()


@pytest.fixture(scope="module")
def idle(tmp_path_factory):
    """A server made with ``worker=False``: nothing in it runs a job."""
    server, served = serve_project(tmp_path_factory.mktemp("idle"), worker=False)
    try:
        yield served
    finally:
        server.stop()


def sdk_for(served, monkeypatch):
    monkeypatch.setenv("AVALA_ALLOW_INSECURE_BASE_URL", "true")
    return avala.Client(api_key=KEY, base_url=served.base_url)


@pytest.fixture
def sdk(served, monkeypatch):
    client = sdk_for(served, monkeypatch)
    yield client
    client.close()


@pytest.fixture
def idle_sdk(idle, monkeypatch):
    client = sdk_for(idle, monkeypatch)
    yield client
    client.close()


def wait_done(sdk, uid: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while True:
        job = sdk.auto_label_jobs.get(uid)
        if job.status in DONE or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def raw(served, method: str, path: str, **kwargs) -> httpx.Response:
    headers = {"X-Avala-Api-Key": KEY}
    return httpx.request(method, served.base_url + path, headers=headers, follow_redirects=False, timeout=30, **kwargs)


def test_a_job_created_with_the_sdk_runs_to_completion(sdk, served):
    created = sdk.auto_label_jobs.create(served.project, model_type="object_detection", confidence_threshold=0.3)
    assert created.status in ("pending", "running", "completed")
    assert (created.model_type, created.confidence_threshold, created.labels, created.dry_run) == (
        "object_detection",
        0.3,
        [],
        False,
    )
    job = wait_done(sdk, created.uid)
    assert job.status == "completed", job
    assert job.total_items == job.processed_items == N_IMAGES
    assert job.successful_items + job.skipped_items == N_IMAGES and job.failed_items == 0
    assert job.progress_pct == 100.0 and job.error_message is None
    assert job.created_at.utcoffset().total_seconds() == 0 and job.completed_at is not None
    body = raw(served, "GET", f"/auto-label-jobs/{created.uid}/").json()
    assert body["progress"] == 100.0 and body["tasks_labeled"] == N_IMAGES and body["error"] is None
    assert body["project"] == served.project and body["labels"] == [] and body["overwrite"] is False
    assert body["created_at"].endswith("Z") and body["completed_at"].endswith("Z")


def test_jobs_list_by_project(sdk, served):
    uid = sdk.auto_label_jobs.create(served.project, model_type="object_detection").uid
    listed = [j.uid for j in sdk.auto_label_jobs.list(project=served.project).items]
    assert uid in listed
    assert sdk.auto_label_jobs.list(project="no-such-project").items == []
    first = sdk.auto_label_jobs.list(project=served.project, limit=1)
    assert len(first.items) == 1 and first.has_more
    assert wait_done(sdk, uid).status == "completed"


def test_an_empty_body_uses_the_projects_only_model_type(sdk, served):
    created = sdk.auto_label_jobs.create(served.project)  # the SDK sends {}
    assert created.model_type == "object_detection" and created.confidence_threshold == 0.25
    answer = raw(served, "POST", f"/projects/{served.project}/auto-label/", json={})
    assert answer.status_code == 201 and answer.json()["model_type"] == "object_detection"
    for uid in (created.uid, answer.json()["uid"]):
        assert wait_done(sdk, uid).status == "completed"


def test_our_extra_overwrite_relabels_every_task(sdk, served):
    first = sdk.auto_label_jobs.create(served.project)
    assert wait_done(sdk, first.uid).status == "completed"
    answer = raw(served, "POST", f"/projects/{served.project}/auto-label/", json={"overwrite": True})
    assert answer.status_code == 201 and answer.json()["overwrite"] is True
    job = wait_done(sdk, answer.json()["uid"])
    assert (job.status, job.successful_items, job.skipped_items) == ("completed", N_IMAGES, 0)


def test_the_avala_clis_yolo_is_object_detection(sdk, served):
    created = sdk.auto_label_jobs.create(served.project, model_type="yolo", labels=["person"])
    assert (created.model_type, created.labels) == ("object_detection", ["person"])
    assert wait_done(sdk, created.uid).status == "completed"


def test_an_unknown_model_type_is_a_validation_error_naming_the_valid_ones(sdk, served):
    with pytest.raises(avala.errors.ValidationError) as caught:
        sdk.auto_label_jobs.create(served.project, model_type="gpt")
    message = str(caught.value)
    assert "unknown model type 'gpt'" in message
    assert "object_detection" in message and "yolo" in message and "sam3" in message
    answer = raw(served, "POST", f"/projects/{served.project}/auto-label/", json={"model_type": "gpt"})
    assert answer.status_code == 400 and isinstance(answer.json()["detail"], str)


def test_bad_options_are_refused_with_our_messages(sdk, served):
    answer = raw(served, "POST", f"/projects/{served.project}/auto-label/", json={"confidence_threshold": 1.5})
    assert answer.status_code in (400, 422) and isinstance(answer.json()["detail"], str), answer.text
    answer = raw(served, "POST", f"/projects/{served.project}/auto-label/", json=["yolo"])
    assert answer.status_code == 422 and isinstance(answer.json()["detail"], str), answer.text


def test_a_label_the_model_lacks_is_refused_once_its_labels_are_known(sdk, served):
    # the model's labels come from its weights: known to the store once a job has loaded the model
    assert wait_done(sdk, sdk.auto_label_jobs.create(served.project).uid).status == "completed"
    with pytest.raises(avala.errors.ValidationError, match="'Person' -> did you mean 'person'"):
        sdk.auto_label_jobs.create(served.project, labels=["Person"])


def test_a_post_without_a_body_is_an_empty_one(sdk, served):
    answer = raw(served, "POST", f"/projects/{served.project}/auto-label/")
    assert answer.status_code == 201, answer.text
    assert wait_done(sdk, answer.json()["uid"]).status == "completed"


def test_an_unknown_body_field_is_refused(served):
    answer = raw(served, "POST", f"/projects/{served.project}/auto-label/", json={"confidence": 0.5})
    assert answer.status_code == 422 and "confidence" in answer.json()["detail"]


def test_an_unknown_job_or_project_is_not_found(sdk):
    with pytest.raises(avala.errors.NotFoundError):
        sdk.auto_label_jobs.get("no-such-job")
    with pytest.raises(avala.errors.NotFoundError):
        sdk.auto_label_jobs.cancel("no-such-job")
    with pytest.raises(avala.errors.NotFoundError):
        sdk.auto_label_jobs.create("no-such-project")


def test_without_a_worker_a_job_stays_pending(idle_sdk, idle):
    uid = idle_sdk.auto_label_jobs.create(idle.project).uid
    time.sleep(1.5)  # the worker thread polls every 0.2 s: it would have claimed it
    job = idle_sdk.auto_label_jobs.get(uid)
    assert (job.status, job.processed_items, job.progress_pct) == ("pending", 0, 0.0)


def test_cancel_answers_204_and_the_job_ends_cancelled(idle_sdk, idle):
    uid = idle_sdk.auto_label_jobs.create(idle.project).uid
    assert idle_sdk.auto_label_jobs.cancel(uid) is None  # the SDK's answer to a 204
    assert idle_sdk.auto_label_jobs.get(uid).status == "cancelled"
    other = idle_sdk.auto_label_jobs.create(idle.project).uid
    answer = raw(idle, "DELETE", f"/auto-label-jobs/{other}/")
    assert (answer.status_code, answer.content) == (204, b"")


def test_the_avala_cli_lists_and_gets_a_job(sdk, served):
    uid = sdk.auto_label_jobs.create(served.project).uid
    assert wait_done(sdk, uid).status == "completed"
    done = avala_cli(served, "-o", "json", "auto-label", "list", "--project", served.project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert uid in [row["uid"] for row in json.loads(done.stdout)]
    done = avala_cli(served, "-o", "json", "auto-label", "get", uid)
    assert done.returncode == 0, done.stdout + done.stderr
    shown = json.loads(done.stdout)
    assert (shown["uid"], shown["status"], shown["progress_pct"]) == (uid, "completed", "100.0%")
    assert shown["total_items"] == str(N_IMAGES)


def worker_threads() -> set:
    import threading

    names = ("avala-infer-worker", "avala-infer-dispatcher")
    return {t for t in threading.enumerate() if t.name in names and t.is_alive()}


def test_stopping_the_app_stops_its_worker_and_the_next_start_finishes_the_job(tmp_path, monkeypatch):
    before = worker_threads()  # the module's server may hold its own
    server, served = serve_project(tmp_path, worker=True)
    client = sdk_for(served, monkeypatch)
    try:
        uid = client.auto_label_jobs.create(served.project).uid
        assert len(worker_threads() - before) == 2  # the app started its worker and its dispatcher
    finally:
        client.close()
        server.stop()
    assert not server.thread.is_alive()
    assert worker_threads() - before == set()
    restarted = ThreadServer(create_app(served.home, [KEY], worker=True)).start()
    client = sdk_for(Served(served.home, restarted.port, served.project, served.images), monkeypatch)
    try:
        job = client.auto_label_jobs.get(uid)
        assert job.status in ("pending", "running", "completed"), job
        job = wait_done(client, uid)  # the new app's worker, started with it, resumes the job
        assert job.status == "completed" and job.processed_items == N_IMAGES
    finally:
        client.close()
        restarted.stop()


def test_avala_infer_serve_runs_the_jobs_unless_no_worker(tmp_path, monkeypatch):
    """The real ``avala-infer serve`` process: ``--no-worker`` leaves a job pending; a plain ``serve`` over the
    same home (after SIGTERM stopped the first) runs it, and a job created over HTTP, to completion."""
    home = tmp_path / "home"
    project = make_project(home, val_images(N_IMAGES), write_spec(tmp_path / "specs"), name="streets")
    env = {"AVALA_INFER_API_KEY": KEY}
    monkeypatch.setenv("AVALA_ALLOW_INSECURE_BASE_URL", "true")
    process, port, err = start_serve(tmp_path, "--home", str(home), "--no-worker", "--device", "cpu", env=env)
    try:
        with avala.Client(api_key=KEY, base_url=f"http://127.0.0.1:{port}/api/v1") as client:
            waiting = client.auto_label_jobs.create(project, model_type="yolo").uid
            time.sleep(1.5)
            assert client.auto_label_jobs.get(waiting).status == "pending"
    finally:
        stop(process)
    process, port, err = start_serve(tmp_path, "--home", str(home), "--device", "cpu", env=env)
    try:
        (child,) = psutil.Process(process.pid).children()  # the jobs run in an `avala-infer worker` child...
        assert "worker" in child.cmdline() and child.nice() == psutil.Process().nice() + 10  # ...below the reads
        with avala.Client(api_key=KEY, base_url=f"http://127.0.0.1:{port}/api/v1") as client:
            assert wait_done(client, waiting).status == "completed", err.read_text()
            created = client.auto_label_jobs.create(project, confidence_threshold=0.4)  # new settings: relabel all
            job = wait_done(client, created.uid)
            assert (job.status, job.successful_items, job.progress_pct) == ("completed", N_IMAGES, 100.0)
    finally:
        stop(process)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE  # stopped with the server


def test_the_worker_child_dies_with_a_killed_server_and_a_new_serve_resumes(tmp_path, monkeypatch):
    """kill -9 of ``serve`` takes its worker child with it (PR_SET_PDEATHSIG): no orphan keeps a lease; the job
    it was running is finished by the next ``serve``'s worker once the lease runs out."""
    home = tmp_path / "home"
    project = make_project(home, val_images(N_IMAGES), write_spec(tmp_path / "specs"), name="streets")
    env = {"AVALA_INFER_API_KEY": KEY}
    monkeypatch.setenv("AVALA_ALLOW_INSECURE_BASE_URL", "true")
    process, port, err = start_serve(tmp_path, "--home", str(home), "--device", "cpu", env=env)
    (child,) = psutil.Process(process.pid).children()
    with avala.Client(api_key=KEY, base_url=f"http://127.0.0.1:{port}/api/v1") as client:
        uid = client.auto_label_jobs.create(project).uid
    process.kill()
    process.wait(10)
    child.wait(10)  # psutil.TimeoutExpired here: the worker outlived its server
    process, port, err = start_serve(tmp_path, "--home", str(home), "--device", "cpu", env=env)
    try:
        with avala.Client(api_key=KEY, base_url=f"http://127.0.0.1:{port}/api/v1") as client:
            job = wait_done(client, uid, timeout=240)
            assert (job.status, job.successful_items) == ("completed", N_IMAGES), err.read_text()
    finally:
        stop(process)


def test_the_avala_cli_creates_and_cancels_a_job(idle_sdk, idle):
    done = avala_cli(idle, "auto-label", "create", "--project", idle.project, "--model-type", "yolo")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Auto-label job created:" in done.stdout and "(status: pending)" in done.stdout
    uid = done.stdout.split("Auto-label job created:")[1].split()[0]
    assert idle_sdk.auto_label_jobs.get(uid).model_type == "object_detection"
    done = avala_cli(idle, "auto-label", "cancel", uid, "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Auto-label job {uid} cancelled." in done.stdout
    assert idle_sdk.auto_label_jobs.get(uid).status == "cancelled"


def test_an_unknown_worker_mode_is_refused_naming_the_modes(tmp_path):
    from avala_infer.errors import ConfigError

    with pytest.raises(ConfigError, match="process, thread, none"):
        create_app(tmp_path / "home", [KEY], worker="threads")
