"""Issue 14: one auto-label job on Ray. A local Ray cluster started by this module (2 CPUs, two CPU actors) runs
real jobs of the real store: the YOLO11n ONNX export on coco128 images (small batches: many commits, so kills
and cancels land between them) and the MiniLM SST-2 text classifier. The Ray runs' stored results equal the local
engine's; a Ray worker process killed (kill -9) mid-job, or the driver (``avala-infer worker --executor ray``)
killed mid-job, loses nothing and duplicates nothing; a cancel stops the job within one batch.

Each Ray job starts its actors afresh (a process that imports the engine and loads the model): on two shared
cores that is most of these tests' time.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from avala_infer.jobs import JobRunner
from avala_infer.jobs.executors import make_executor
from avala_infer.projects.imports import import_sources
from avala_infer.store import Store, worker_id
from avala_infer.types import Text
from tests.conftest import ASSETS, VAL_IMAGES, need
from tests.jobs_helpers import (
    BATCH,
    Reader,
    WorkerProcess,
    assert_job_consistent,
    create_job,
    make_project,
    run_worker,
    uniform_images,
    wait_until,
    write_spec,
)

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'avala-infer[ray]')")
psutil = pytest.importorskip("psutil")

pytestmark = [pytest.mark.slow, pytest.mark.assets]

TOTAL = 24  # images of the detection project (uniform_images(): one letterboxed shape, so commits come steadily)
TOLERANCE = 1e-4
ACTOR_MARK = "MapBatches(EngineActor)"  # in the title Ray gives an actor process of our map_batches
SENTIMENT = "sentiment-minilm-sst2"


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster for the module, its address (drivers in subprocesses join it); shut down after."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=96 * 2**20, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    need(VAL_IMAGES)
    need(ASSETS / "models" / "yolo11n.onnx")
    return write_spec(tmp_path_factory.mktemp("specs"), name="ray-yolo")


@pytest.fixture(scope="module")
def images() -> list[Path]:
    return uniform_images()[:TOTAL]


def run_here(home: Path, job_uid: str, executor: Any) -> dict[str, Any]:
    """Claim and run ``job_uid`` in this process with ``executor``; the finished job."""
    with Store(home) as store, JobRunner(store, worker_id(), device="cpu", executor=executor) as runner:
        job = store.jobs.claim(runner.worker, runner.lease_s, only=job_uid)
        finished = runner.run(job)
    assert finished is not None and finished["status"] == "completed", finished
    return finished


def stored(home: Path, project: str) -> dict[str, Any]:
    reader = Reader(home)
    try:
        return {key: row["annotations"] for key, row in reader.results(project).items()}
    finally:
        reader.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, spec, images) -> dict[str, Any]:
    """{item key: stored annotations} of the detection job run by the local engine."""
    home = tmp_path_factory.mktemp("local")
    project = make_project(home, images, spec)
    run_here(home, create_job(home, project), make_executor("local"))
    results = stored(home, project)
    assert len(results) == TOTAL and sum(len(r["annotations"]) for r in results.values()) > TOTAL
    return results


def assert_close(ours: Any, theirs: Any, where: str = "") -> None:
    """Equal structures: the same keys, lengths, strings and classes; numbers within :data:`TOLERANCE`."""
    if isinstance(ours, dict):
        assert isinstance(theirs, dict) and ours.keys() == theirs.keys(), f"{where}: {ours} != {theirs}"
        for key in ours:
            assert_close(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, list):
        assert isinstance(theirs, list) and len(ours) == len(theirs), f"{where}: {len(ours)} != {len(theirs)} entries"
        for n, (a, b) in enumerate(zip(ours, theirs)):
            assert_close(a, b, f"{where}[{n}]")
    elif isinstance(ours, float) or isinstance(theirs, float):
        assert abs(ours - theirs) <= TOLERANCE, f"{where}: {ours} != {theirs}"
    else:
        assert ours == theirs, f"{where}: {ours!r} != {theirs!r}"


def actor_processes() -> list[psutil.Process]:
    """This host's processes of our map_batches actors (Ray titles them ``ray::MapWorker(MapBatches(...))``)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(ACTOR_MARK in part for part in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


# ------------------------------------------------------------------------------------------------ identical output
def test_a_ray_detection_job_stores_the_local_engines_results(tmp_path, cluster, spec, images, reference):
    home = tmp_path / "home"
    project = make_project(home, images, spec)
    job_uid = create_job(home, project)
    job = run_here(home, job_uid, make_executor("ray"))
    reader = Reader(home)
    job = assert_job_consistent(reader, job_uid, project)
    reader.close()
    assert (job["successful_items"], job["failed_items"], job["skipped_items"]) == (TOTAL, 0, 0)
    assert json.loads(job["summary"])["executor"] == "ray"
    results = stored(home, project)
    assert results.keys() == reference.keys()
    for key in reference:
        assert_close(results[key], reference[key], key)


def test_a_ray_text_job_stores_the_local_engines_results(tmp_path, cluster):
    need(ASSETS / "models" / SENTIMENT)
    lines = (need(ASSETS / "data" / "sst2" / "test.tsv")).read_text(encoding="utf-8").splitlines()[1:41]
    texts = [line.rsplit("\t", 1)[0].strip() for line in lines]
    runs = {}
    for name in ("local", "ray"):
        home = tmp_path / name
        with Store(home) as store:
            project = store.projects.create("texts", data_type="text", models={"text_classification": SENTIMENT})
            assert import_sources(store, project["uid"], [Text(t) for t in texts]).created == len(texts)
            job_uid = store.jobs.create(project["uid"], model_type="text_classification", confidence_threshold=0.0)
        run_here(home, job_uid["uid"], make_executor(name))
        runs[name] = stored(home, project["uid"])
    assert len(runs["local"]) == len(texts)
    classes = {a["label"] for r in runs["local"].values() for a in r["annotations"]}
    assert classes == {"negative", "positive"}, classes  # both classes occur: a swapped label map would show
    assert runs["ray"].keys() == runs["local"].keys()
    for key in runs["local"]:
        assert_close(runs["ray"][key], runs["local"][key], key)


def test_a_job_created_with_executor_ray_runs_on_ray(tmp_path, cluster, spec, images, reference):
    """``client.auto_label_jobs.create(..., executor="ray")``: the job keeps its executor, and whoever runs it
    (here ``auto_label_jobs.run`` in this thread, with the local executor by default) runs it on Ray."""
    from avala_infer import Avala
    from avala_infer.errors import ConfigError

    home = tmp_path / "home"
    project = make_project(home, images[:8], spec)
    with Avala(home=home, worker=False) as client:
        with pytest.raises(ConfigError, match="executor must be one of local, ray"):
            client.auto_label_jobs.create(project, model_type="object_detection", executor="spark")
        job = client.auto_label_jobs.create(
            project, model_type="object_detection", confidence_threshold=0.25, executor="ray"
        )
        assert job.executor == "ray"
        job = client.auto_label_jobs.run(job.uid, device="cpu")
    assert job.status == "completed" and job.successful_items == 8, job
    assert job.summary["executor"] == "ray"
    results = stored(home, project)
    assert len(results) == 8
    for key, found in results.items():
        assert_close(found, reference[key], key)


def test_a_ray_dry_run_draws_its_preview_on_the_driver(tmp_path, cluster, spec, images):
    """A dry run's preview draws the decoded pictures: it runs on the driver's engine, and writes its gallery."""
    home = tmp_path / "home"
    project = make_project(home, images[:4], spec)
    job = run_here(home, create_job(home, project, dry_run=True), make_executor("ray"))
    summary = json.loads(job["summary"]) if isinstance(job["summary"], str) else job["summary"]
    assert summary["executor"] == "ray" and job["processed_items"] == 4
    assert summary["preview"] and Path(summary["preview"]).is_file()
    assert stored(home, project) == {}  # a dry run stores no results


# ------------------------------------------------------------------------------------- nothing lost, nothing twice
def test_a_ray_worker_killed_mid_job_loses_and_repeats_nothing(tmp_path, cluster, spec, images, reference):
    """kill -9 of an actor's process once the job has committed its first batch: Ray restarts the actor and
    runs its blocks again; the job completes with one result per task, equal to the local run's."""
    home = tmp_path / "home"
    project = make_project(home, images, spec)
    job_uid = create_job(home, project)
    finished: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: finished.update(run_here(home, job_uid, make_executor("ray"))))
    thread.start()
    reader = Reader(home)
    try:
        wait_until(lambda: reader.job(job_uid)["processed_items"] >= BATCH, 240, "the first batch committed")
        victims = actor_processes()
        assert victims, "no actor process found"
        at_kill = reader.job(job_uid)["processed_items"]
        os.kill(victims[0].pid, signal.SIGKILL)
        assert at_kill < TOTAL, "the job finished before the kill: nothing was tested"
        thread.join(300)
        assert not thread.is_alive(), "the job did not finish after the kill"
        assert not victims[0].is_running()
        job = assert_job_consistent(reader, job_uid, project)
        assert job["status"] == "completed" and job["attempts"] == 1, job
        assert (job["successful_items"], job["failed_items"]) == (TOTAL, 0)
        assert finished["uid"] == job_uid
        results = stored(home, project)
        assert results.keys() == reference.keys()
        for key in reference:
            assert_close(results[key], reference[key], key)
    finally:
        thread.join(300)
        reader.close()


def test_a_killed_ray_driver_is_resumed_by_a_new_worker(tmp_path, cluster, spec, images, reference):
    """kill -9 of ``avala-infer worker --executor ray`` after its first commit; a new one resumes the job from the
    store: the tasks committed before stay as they were, the rest are labeled once."""
    home = tmp_path / "home"
    project = make_project(home, images, spec)
    job_uid = create_job(home, project)
    reader = Reader(home)
    first = WorkerProcess(home, "--until-idle", "--executor", "ray", "--address", cluster)
    try:
        wait_until(
            lambda: reader.job(job_uid)["processed_items"] > 0 or first.proc.poll() is not None,
            240,
            "the first driver's first commit",
        )
        assert first.proc.poll() is None, f"the driver exited early:\n{first.log()[-3000:]}"
        os.kill(first.pid, signal.SIGKILL)
        first.reap()
        job = reader.job(job_uid)
        assert job["status"] == "running" and first.holds(job) and job["processed_items"] < TOTAL, job
        committed = Reader(home).results(project)
        last = run_worker(home, "--executor", "ray", "--address", cluster, timeout=300)
        assert last.ran_jobs() == 1
        job = assert_job_consistent(reader, job_uid, project)
        assert job["status"] == "completed" and job["attempts"] == 2 and last.holds(job), job
        assert (job["successful_items"], job["failed_items"]) == (TOTAL, 0)
        rows = reader.results(project)
        assert all(rows[key]["uid"] == row["uid"] for key, row in committed.items()), "a committed task was redone"
        results = {key: row["annotations"] for key, row in rows.items()}
        assert results.keys() == reference.keys()
        for key in reference:
            assert_close(results[key], reference[key], key)
    finally:
        first.kill()
        first.reap()
        reader.close()


def test_a_ray_job_cancels_within_one_batch(tmp_path, cluster, spec, images):
    home = tmp_path / "home"
    project = make_project(home, images, spec)
    job_uid = create_job(home, project)
    finished: dict[str, Any] = {}

    def run() -> None:
        with Store(home) as store, JobRunner(store, worker_id(), device="cpu", executor=make_executor("ray")) as r:
            finished.update(r.run(store.jobs.claim(r.worker, r.lease_s, only=job_uid)) or {})

    thread = threading.Thread(target=run)
    thread.start()
    reader = Reader(home)
    try:
        wait_until(lambda: reader.job(job_uid)["processed_items"] > 0, 240, "the first commit")
        with Store(home) as store:
            store.jobs.request_cancel(job_uid)
        at_cancel = reader.job(job_uid)["processed_items"]
        thread.join(120)
        assert not thread.is_alive()
        job = assert_job_consistent(reader, job_uid, project)
        assert finished["status"] == job["status"] == "cancelled", job
        assert job["processed_items"] <= at_cancel + BATCH < TOTAL, (at_cancel, job["processed_items"])
        wait_until(lambda: not actor_processes(), 60, "the cancelled dataset's actors to exit")
    finally:
        thread.join(120)
        reader.close()
