"""Helpers for the job durability tests: small image projects in a throwaway home, real ``avala-infer worker``
processes, and read-only looks at the store while they run."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avala_infer.engine.image_header import image_size
from avala_infer.projects.imports import import_sources
from avala_infer.store import Store
from tests.conftest import REPO, VAL_IMAGES

MODEL_TYPE = "object_detection"
BATCH = 2  # small batches: many commits, so kills and cancels land between them
INPUT_SIZE = 640  # about 13 images/s on two CPU cores


def val_images(count: int, start: int = 0) -> list[Path]:
    images = sorted(VAL_IMAGES.glob("*.jpg"))[start : start + count]
    assert len(images) == count, f"coco128 val2017 has {len(images)} images from {start}, {count} wanted"
    return images


def uniform_images() -> list[Path]:
    """The val2017 images that letterbox to one shape (640 wide, 417-448 high: 448x640 at 640 px), 34 of them.

    One shape, one batch bucket: the engine yields their predictions steadily, so a job over them commits batch
    after batch and a kill or a cancel lands between commits (see the note on odd shapes in the tests)."""
    images = []
    for path in sorted(VAL_IMAGES.glob("*.jpg")):
        width, height = image_size(path.read_bytes()[:65536]) or (0, 0)
        if width == 640 and 416 < height <= 448:
            images.append(path)
    return images


def linked_copies(folder: Path, images: list[Path], copies: int) -> list[Path]:
    """``copies`` copies of each image under new names (distinct items of the same content). Copies, not
    symbolic links: an import counts a file reached twice (a link to a file it has already) once."""
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for n in range(copies):
        for image in images:
            link = folder / f"copy{n}_{image.name}"
            shutil.copyfile(image, link)
            links.append(link)
    return links


def write_spec(folder: Path, *, name: str = "durability-yolo", weights: str = "yolo11n.onnx") -> Path:
    """A spec of the real YOLO11n ONNX export with small batches and a small input (fast, many commits)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nmodel_type: {MODEL_TYPE}\nbackend: onnxruntime\nweights: {weights}\n"
        f"input_size: {INPUT_SIZE}\nbatch_size: {BATCH}\n",
        encoding="utf-8",
    )
    return path


def make_project(home: Path, sources: list[Any], model: str | Path, name: str = "durability") -> str:
    """A project in ``home`` serving ``model`` for object detection, with ``sources`` imported; its uid."""
    store = Store(home)
    try:
        project = store.projects.create(name, models={MODEL_TYPE: str(model)})
        report = import_sources(store, project["uid"], [str(s) for s in sources])
        assert report.failed_count == 0, report.failed
        assert report.created == len(sources), report
        return project["uid"]
    finally:
        store.close()


def create_job(home: Path, project_uid: str, **options: Any) -> str:
    store = Store(home)
    try:
        options.setdefault("confidence_threshold", 0.25)
        return store.jobs.create(project_uid, model_type=MODEL_TYPE, **options)["uid"]
    finally:
        store.close()


class WorkerProcess:
    """One ``avala-infer worker`` process; its stdout and stderr go to files (no pipe to fill)."""

    def __init__(self, home: Path, *args: str, lease_s: float = 60.0, poll_s: float | None = None) -> None:
        self.home = home
        logs = home / "worker-logs"
        logs.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.monotonic_ns()}"
        self.err_path = logs / f"{stamp}.err"
        command = [sys.executable, "-m", "avala_infer.cli", "-v", "worker", "--home", str(home), "--device", "cpu"]
        command += ["--lease", str(lease_s), *args]
        if poll_s is not None:
            command += ["--poll", str(poll_s)]
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(command, cwd=REPO, stdout=err, stderr=subprocess.STDOUT, env=os.environ.copy())
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            message = f"worker {self.pid} still ran after {timeout}s; its log:\n{self.log()[-3000:]}"
            raise AssertionError(message) from None

    def kill(self) -> None:
        """SIGKILL (kill -9); the process is not reaped here (see :meth:`reap`)."""
        if self.proc.poll() is None:
            self.proc.kill()

    def reap(self) -> None:
        self.proc.wait(30)

    def ran_jobs(self) -> int:
        """The count the worker prints when it exits: ``worker ID: ran N job(s)``."""
        for line in self.log().splitlines():
            if ": ran " in line and line.startswith("worker "):
                return int(line.rsplit(": ran ", 1)[1].split()[0])
        raise AssertionError(f"worker {self.pid} printed no 'ran N job(s)' line:\n{self.log()[-3000:]}")

    def holds(self, job: dict[str, Any]) -> bool:
        """Whether ``job``'s holder (``host:pid:random``) is this process."""
        return (job.get("worker") or "").split(":")[1:2] == [str(self.pid)]


def run_worker(home: Path, *args: str, timeout: float = 120.0, **kwargs: Any) -> WorkerProcess:
    """``avala-infer worker --until-idle`` to its end; asserts it exited 0."""
    worker = WorkerProcess(home, "--until-idle", *args, **kwargs)
    rc = worker.wait(timeout)
    assert rc == 0, f"worker exited {rc}:\n{worker.log()[-3000:]}"
    return worker


class Reader:
    """A plain sqlite3 connection that only reads (no migrations, no write lock), as a monitoring tool would."""

    def __init__(self, home: Path) -> None:
        self.conn = sqlite3.connect(str(home / "avala-infer.db"), timeout=30, isolation_level=None)
        self.conn.row_factory = sqlite3.Row

    def job(self, uid: str) -> dict[str, Any]:
        return dict(self.conn.execute("SELECT * FROM jobs WHERE uid = ?", (uid,)).fetchone())

    def results(self, project_uid: str) -> dict[str, dict[str, Any]]:
        """{item key: result row (uid, job_uid, model, annotations decoded)} of the project."""
        rows = self.conn.execute(
            "SELECT i.key, r.uid, r.job_uid, r.model, r.annotations, r.is_draft FROM results r "
            "JOIN tasks t ON t.uid = r.task_uid JOIN items i ON i.uid = t.item_uid WHERE t.project_uid = ?",
            (project_uid,),
        ).fetchall()
        out = {}
        for row in rows:
            assert row["key"] not in out, f"two results for {row['key']}"
            out[row["key"]] = {**dict(row), "annotations": json.loads(row["annotations"])}
        return out

    def task_statuses(self, project_uid: str) -> dict[str, str]:
        rows = self.conn.execute(
            "SELECT i.key, t.status FROM tasks t JOIN items i ON i.uid = t.item_uid WHERE t.project_uid = ?",
            (project_uid,),
        )
        return {key: status for key, status in rows}

    def job_tasks(self, job_uid: str) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM job_tasks WHERE job_uid = ?", (job_uid,)).fetchall()
        return [dict(r) for r in rows]

    def close(self) -> None:
        self.conn.close()


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll ``condition`` until it returns something truthy (returned); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def assert_job_consistent(reader: Reader, job_uid: str, project_uid: str) -> dict[str, Any]:
    """The store's invariants for a finished job: one job_tasks row per task it handled, counters that add up
    and match those rows, one result per successful task (this job's), labeled tasks exactly those. Returns
    the job row."""
    job = reader.job(job_uid)
    rows = reader.job_tasks(job_uid)
    tasks = [r["task_uid"] for r in rows]
    assert len(tasks) == len(set(tasks)), "a task has two job_tasks rows"
    outcomes = [r["outcome"] for r in rows]
    assert job["processed_items"] == len(rows)
    assert job["successful_items"] == outcomes.count("succeeded")
    assert job["failed_items"] == outcomes.count("failed")
    assert job["skipped_items"] == outcomes.count("skipped")
    assert job["successful_items"] + job["failed_items"] + job["skipped_items"] == job["processed_items"]
    if job["status"] == "completed":
        assert job["processed_items"] == job["total_items"] == len(reader.task_statuses(project_uid))
    return job


# ------------------------------------------------------------------ issue 9: results independent of batch composition
TRAIN_IMAGES = VAL_IMAGES.parent / "train2017"
# coco128 train2017 images that letterbox to 480x640 (one batch bucket) where the old whole-batch NMS changed
# 000000000164.jpg's boxes: 12 alone, 13 as the 8th of this batch (see tests/test_batch_independence.py)
NMS_REPRO_BATCH = [f"000000000{n}.jpg" for n in ("009", "042", "077", "089", "110", "133", "136", "164")]


def train_images_of_shape(height: int = 480, width: int = 640, size: int = INPUT_SIZE) -> list[Path]:
    """coco128 train2017 images that letterbox (``rect``: padding to a multiple of 32) to ``height`` x ``width``."""
    images = []
    for path in sorted(TRAIN_IMAGES.glob("*.jpg")):
        w, h = image_size(path.read_bytes()[:65536]) or (0, 0)
        if not w or not h:
            continue
        gain = min(size / h, size / w)
        new_h, new_w = round(h * gain), round(w * gain)
        if (-(-new_h // 32) * 32, -(-new_w // 32) * 32) == (height, width):
            images.append(path)
    return images


def write_batch_spec(folder: Path, batch_size: int, *, name: str = "batch-yolo", weights: str = "yolo11n.onnx") -> Path:
    """``write_spec``'s YOLO11n ONNX spec with another batch size (rewrites the file when it exists)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nmodel_type: {MODEL_TYPE}\nbackend: onnxruntime\nweights: {weights}\n"
        f"input_size: {INPUT_SIZE}\nbatch_size: {batch_size}\n",
        encoding="utf-8",
    )
    return path
