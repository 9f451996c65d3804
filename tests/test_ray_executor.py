"""Issue 14: one auto-label job on Ray. The module starts a Ray cluster as one is set up in production, on this
host: ``ray start --head`` (with a Ray Client server) and a second node joined with ``ray start --address``, one
CPU each, so a job's two CPU actors run on two nodes. Real jobs of the real store run on it: the YOLO11n ONNX
export on coco128 images (small batches: many commits, so kills and cancels land between them) and the MiniLM
SST-2 text classifier. The Ray runs' stored results equal the local engine's; a Ray worker process killed (kill -9)
mid-job, or the driver (``avala-infer worker --executor ray``) killed mid-job, loses nothing and duplicates
nothing, and the driver that resumes it joins through Ray Client (``ray://``); a cancel stops the job within one
batch; the driver reads a window of the job's tasks at a time, not all of them; a CPU actor's model uses the
CPUs Ray gave it, not the host's.

Each Ray job starts its actors afresh (a process that imports the engine and loads the model): on two shared
cores that is most of these tests' time, so each job here checks all it can.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from avala_infer.jobs import JobRunner
from avala_infer.jobs.executors import make_executor
from avala_infer.jobs.executors.ray import BATCHES_PER_CALL, WINDOW_CALLS
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
TEXT_BATCH = 8  # the text model's batch in the window test: a window of a few hundred rows, far short of a real job's


@dataclass(frozen=True)
class Cluster:
    address: str  # host:port of the head's GCS (drivers on the cluster's hosts)
    client: str  # ray://host:port of the head's Ray Client server (drivers elsewhere)
    nodes: tuple[int, ...]  # the `ray start --block` processes: each node's Ray processes are under its own


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_node(*args: str, logs: Path) -> subprocess.Popen:
    """``ray start --block ARGS``: a node that runs until this process is stopped (SIGTERM: it stops its
    node's Ray processes), so the test stops its own cluster and nothing else on the host.

    Without token authentication: ``ray start`` turns it on when the host has a token (~/.ray/auth_token), and
    a driver given an explicit address then needs ``RAY_AUTH_MODE=token``; this short-lived test cluster keeps
    its drivers as they are on any host."""
    command = [str(Path(sys.executable).with_name("ray")), "start", "--block", *args]
    # no graceful drain at the end (30 s by default): nothing runs on it by then
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "1"}
    with open(logs / f"ray-start-{len(list(logs.iterdir()))}.log", "wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def stop_nodes(nodes: list[subprocess.Popen]) -> None:
    for proc in reversed(nodes):  # the worker node first, the head last
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two Ray nodes on this host (one CPU each, small object stores), started with ``ray start`` as on a real
    cluster, the head with a Ray Client server; this process joins it as a driver. Stopped after."""
    logs = tmp_path_factory.mktemp("ray-logs")
    gcs, client, agent = free_port(), free_port(), free_port()
    node = [
        "--num-cpus=1",
        f"--object-store-memory={80 * 2**20}",
        "--disable-usage-stats",
    ]
    # the runtime env agent's port given: else the client server starts each client's server without it (and
    # fails); Ray picks it itself only when the dashboard runs
    head = [f"--port={gcs}", f"--ray-client-server-port={client}", f"--runtime-env-agent-port={agent}"]
    nodes = [ray_node("--head", *head, "--include-dashboard=false", *node, logs=logs)]
    try:
        wait_until(lambda: listening(gcs, nodes[0]), 120, "the head node", interval=0.5)
        ray.init(address=f"127.0.0.1:{gcs}", log_to_driver=False)
        nodes.append(ray_node(f"--address=127.0.0.1:{gcs}", *node, logs=logs))
        wait_until(lambda: len([n for n in ray.nodes() if n["Alive"]]) == 2, 120, "the second node", interval=0.5)
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        yield Cluster(f"127.0.0.1:{gcs}", f"ray://127.0.0.1:{client}", tuple(proc.pid for proc in nodes))
    finally:
        ray.shutdown()
        stop_nodes(nodes)


def listening(port: int, head: subprocess.Popen) -> bool:
    """Whether the head's GCS accepts connections yet (an AssertionError with its log if it exited)."""
    assert head.poll() is None, f"ray start --head exited {head.returncode}: see {head.args} and the log"
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


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


def summary_of(job: dict[str, Any]) -> dict[str, Any]:
    """A job's summary, from the runner (a dict) or from a row of the store (its JSON)."""
    return json.loads(job["summary"]) if isinstance(job["summary"], str) else job["summary"]


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


def actor_processes(cluster: Cluster) -> list[psutil.Process]:
    """The cluster's processes of our map_batches actors (Ray titles them ``ray::MapWorker(MapBatches(...))``)."""
    found = []
    for node in cluster.nodes:
        for proc in psutil.Process(node).children(recursive=True):
            try:
                if any(ACTOR_MARK in part for part in proc.cmdline()):
                    found.append(proc)
            except psutil.NoSuchProcess:  # a worker that exited meanwhile
                pass
    return found


# ------------------------------------------------------------------------------------------------ identical output
def text_spec(folder: Path) -> Path:
    """The MiniLM SST-2 classifier with batches of :data:`TEXT_BATCH` (the registry's spec but for the batch)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ray-sentiment.yaml"
    path.write_text(
        f"name: ray-sentiment\nmodel_type: text_classification\nbackend: transformers\nweights: {SENTIMENT}\n"
        f"labels: from_weights\nbatch_size: {TEXT_BATCH}\n",
        encoding="utf-8",
    )
    return path


def run_counting_reads(home: Path, job_uid: str, executor: Any) -> tuple[dict[str, Any], int | None]:
    """:func:`run_here`, counting the tasks the runner has read from the store when it commits its first
    predictions (the store's own reads, counted as they are made); the finished job and that count."""
    read, at_first_commit = [0], []
    with Store(home) as store, JobRunner(store, worker_id(), device="cpu", executor=executor) as runner:
        remaining, record = store.jobs.remaining_tasks, store.jobs.record_batch

        def counted(*args, **kwargs):
            for task in remaining(*args, **kwargs):
                read[0] += 1
                yield task

        def recorded(job, worker, outcomes, lease_s):
            if outcomes and not at_first_commit:
                at_first_commit.append(read[0])
            return record(job, worker, outcomes, lease_s)

        store.jobs.remaining_tasks, store.jobs.record_batch = counted, recorded
        finished = runner.run(store.jobs.claim(runner.worker, runner.lease_s, only=job_uid))
    return finished, (at_first_commit or [None])[0]


def test_a_ray_text_job_stores_the_local_engines_results_reading_a_window_of_tasks(tmp_path, cluster):
    """The same text job run locally and on Ray stores the same results; the Ray driver reads the job's tasks
    from the store as the actors go (a window of them in flight), not the whole job before its first commit."""
    need(ASSETS / "models" / SENTIMENT)
    lines = (need(ASSETS / "data" / "sst2" / "test.tsv")).read_text(encoding="utf-8").splitlines()[1:241]
    texts = [line.rsplit("\t", 1)[0].strip() for line in lines]
    spec = text_spec(tmp_path / "specs")
    page = TEXT_BATCH * BATCHES_PER_CALL
    window = 2 * page * WINDOW_CALLS  # two actors: one per node
    assert len(texts) > window + page, "the job must outgrow the window to test it"
    runs, read = {}, {}
    for name in ("local", "ray"):
        home = tmp_path / name
        with Store(home) as store:
            project = store.projects.create("texts", data_type="text", models={"text_classification": str(spec)})
            assert import_sources(store, project["uid"], [Text(t) for t in texts]).created == len(texts)
            job_uid = store.jobs.create(project["uid"], model_type="text_classification", confidence_threshold=0.0)
        finished, read[name] = run_counting_reads(home, job_uid["uid"], make_executor(name))
        assert finished["status"] == "completed" and finished["successful_items"] == len(texts), finished
        assert summary_of(finished)["executor"] == name
        runs[name] = stored(home, project["uid"])
    assert read["ray"] is not None and read["ray"] <= window + page < len(texts), read
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
def test_a_ray_detection_job_with_a_worker_killed_stores_the_local_engines_results(
    tmp_path, cluster, spec, images, reference
):
    """The job's two actors run on the cluster's two nodes. kill -9 of an actor's process once the job has
    committed its first batch: Ray restarts the actor and runs its blocks again; the job completes with one
    result per task, equal to the local engine's run (boxes within 1e-4, same classes)."""
    home = tmp_path / "home"
    project = make_project(home, images, spec)
    job_uid = create_job(home, project)
    finished: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: finished.update(run_here(home, job_uid, make_executor("ray"))))
    thread.start()
    reader = Reader(home)
    try:
        wait_until(lambda: reader.job(job_uid)["processed_items"] >= BATCH, 240, "the first batch committed")
        victims = actor_processes(cluster)
        assert len(victims) == 2, victims
        assert len({victim.ppid() for victim in victims}) == 2, "both actors run under one node's raylet"
        at_kill = reader.job(job_uid)["processed_items"]
        os.kill(victims[0].pid, signal.SIGKILL)
        assert at_kill < TOTAL, "the job finished before the kill: nothing was tested"
        thread.join(300)
        assert not thread.is_alive(), "the job did not finish after the kill"
        assert not victims[0].is_running()
        job = assert_job_consistent(reader, job_uid, project)
        assert job["status"] == "completed" and job["attempts"] == 1, job
        assert (job["successful_items"], job["failed_items"], job["skipped_items"]) == (TOTAL, 0, 0)
        assert finished["uid"] == job_uid and summary_of(finished)["executor"] == "ray"
        results = stored(home, project)
        assert results.keys() == reference.keys()
        for key in reference:
            assert_close(results[key], reference[key], key)
    finally:
        thread.join(300)
        reader.close()


def test_a_killed_ray_driver_is_resumed_by_a_new_worker(tmp_path, cluster, spec, images, reference):
    """kill -9 of ``avala-infer worker --executor ray`` after its first commit; a new one, a Ray Client driver
    (``--address ray://``), resumes the job from the store: the tasks committed before stay as they were, the
    rest are labeled once."""
    home = tmp_path / "home"
    project = make_project(home, images, spec)
    job_uid = create_job(home, project)
    reader = Reader(home)
    first = WorkerProcess(home, "--until-idle", "--executor", "ray", "--address", cluster.address)
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
        last = run_worker(home, "--executor", "ray", "--address", cluster.client, timeout=300)
        assert last.ran_jobs() == 1
        job = assert_job_consistent(reader, job_uid, project)
        assert job["status"] == "completed" and job["attempts"] == 2 and last.holds(job), (job, last.log()[-4000:])
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
        wait_until(lambda: not actor_processes(cluster), 60, "the cancelled dataset's actors to exit")
    finally:
        thread.join(120)
        reader.close()


# --------------------------------------------------------------------------------------------------- CPU threads
def test_a_cpu_actor_runs_its_models_on_the_cpus_ray_gave_it(cluster, spec):
    """An actor with one of this host's two CPUs runs onnxruntime and torch on one thread (the engine alone
    would size them from os.cpu_count(), every core of the node, in every actor)."""
    need(ASSETS / "models" / SENTIMENT)
    images = sorted(VAL_IMAGES.glob("*.jpg"))[:2]

    def threads_in_an_actor(detector: str, texts: str, paths: list[str]) -> dict[str, int]:
        import os

        import torch

        from avala_infer.engine.sources import Item
        from avala_infer.jobs.executors.ray import EngineActor

        found = {"cpu_count": os.cpu_count()}
        for name, model, items in (("onnx", detector, paths), ("torch", texts, None)):
            actor = EngineActor(model, "cpu", None, {"num_cpus": 1})
            actor.options = actor.engine.predict_options(confidence_threshold=0.25)
            rows = [Item(n, p, p) for n, p in enumerate(items)] if items else [Item(0, "<t>", "t", text="fine")]
            assert all(p.ok for p in actor.engine.stream(rows, actor.options))
            session = getattr(actor.engine.predictor, "session", None)
            session = getattr(session, "session", session)  # a bound session wraps onnxruntime's
            if name == "onnx":
                found["onnx"] = session.get_session_options().intra_op_num_threads
            else:
                found["torch"] = torch.get_num_threads()
            actor.engine.close()
        return found

    probe = ray.remote(num_cpus=1)(threads_in_an_actor)  # a task: Ray runs it as it runs an actor's methods
    found = ray.get(probe.remote(str(spec), SENTIMENT, [str(p) for p in images]), timeout=300)
    assert found["cpu_count"] > 1, "a host with one CPU cannot tell the actor's CPUs from the host's"
    assert (found["onnx"], found["torch"]) == (1, 1), found


# --------------------------------------------------------------------------------------------- Ray Client sessions
def test_a_ray_client_session_the_server_aborts_is_tried_again(monkeypatch, caplog):
    """A Ray Client server fails to start a driver's session now and then (here, once in 11 runs of this module:
    gRPC aborted the server's fork, "Starting Ray client server failed", and the resumed job failed). The failure
    cannot be caused on demand, so ``ray.init`` is made to raise what the client raises then: the driver tries
    again after each delay, and gives up with the server's error once the delays are spent."""
    import avala_infer.jobs.executors.ray as ray_executor

    monkeypatch.setattr(ray_executor, "CLIENT_RETRY_DELAYS_S", (0.0, 0.0))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    attempts: list[dict] = []

    def init(**kwargs):
        attempts.append(kwargs)
        if len(attempts) <= failures:
            raise ConnectionAbortedError("Initialization failure from server:\nStarting Ray client server failed.")

    monkeypatch.setattr(ray, "init", init)
    failures = 2  # then the third try starts a session
    assert make_executor("ray", address="ray://127.0.0.1:1").connect() is ray
    assert attempts == [{"address": "ray://127.0.0.1:1"}] * 3
    assert caplog.text.count("did not start a session") == 2
    attempts.clear()
    failures = 3  # more than the delays allow: the server's error reaches the job
    with pytest.raises(ConnectionAbortedError, match="Starting Ray client server failed"):
        make_executor("ray", address="ray://127.0.0.1:1").connect()
    assert len(attempts) == 3
    attempts.clear()
    failures = 1  # a cluster address (no Ray Client): no second try
    with pytest.raises(ConnectionAbortedError):
        make_executor("ray", address="127.0.0.1:1").connect()
    assert len(attempts) == 1
