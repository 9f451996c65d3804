"""Issue 10 item 1: a job skips a task only when the task holds a result of the same model made with the same
settings (one fingerprint); other settings label again, ``overwrite`` relabels even the same settings; results
keep the job that made them, and exports take each task's newest result or those of one job. Real jobs of YOLO11n
(ONNX, CPU) over a real store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from avala_infer import Avala
from avala_infer.jobs import Worker
from avala_infer.projects.exports import export_project
from avala_infer.store import Store
from avala_infer.store.jobs import job_settings, settings_fingerprint
from tests.conftest import ASSETS, VAL_IMAGES, need
from tests.test_client_spec_examples import MONITOR, _run

IMAGES = ["000000000139.jpg", "000000000285.jpg", "000000000632.jpg", "000000000724.jpg"]
DET = "object_detection"


def _run_jobs(home: Path) -> None:
    assert Worker(home, device="cpu", poll_s=0.05).run(until_idle=True) >= 1


def _coco(store, project: str, out: Path, **kwargs) -> dict:
    export_project(store, project, out, ["coco"], **kwargs)
    return json.loads((out / "annotations.coco.json").read_text())


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """One project, four jobs run in turn: 0.3, 0.6, 0.6 again, 0.6 with overwrite."""
    root = tmp_path_factory.mktemp("settings")
    need(ASSETS / "models" / "yolo11n.onnx")
    folder = root / "images"
    folder.mkdir()
    for name in IMAGES:
        shutil.copy(need(VAL_IMAGES / name), folder / name)
    client = Avala(home=root / "home", worker=False)
    project = client.projects.create("streets", models={DET: "yolo11n-onnx"})
    assert client.projects.import_items(project.uid, [folder]).created == 4
    made = {}
    for name, kwargs in [("low", {"confidence_threshold": 0.3}), ("high", {"confidence_threshold": 0.6}),
                         ("again", {"confidence_threshold": 0.6}),
                         ("forced", {"confidence_threshold": 0.6, "overwrite": True})]:  # fmt: skip
        made[name] = client.auto_label_jobs.create(project.uid, model_type=DET, **kwargs).uid
        _run_jobs(client.home)
    got = {name: client.auto_label_jobs.get(uid) for name, uid in made.items()}
    yield client, project.uid, root, got
    client.close()


def test_new_settings_label_again_same_settings_skip_and_overwrite_relabels(jobs):
    client, project, _, got = jobs
    assert all(job.status == "completed" for job in got.values())
    counts = {name: (job.successful_items, job.skipped_items) for name, job in got.items()}
    print("succeeded, skipped per job:", counts)
    assert counts == {"low": (4, 0), "high": (4, 0), "again": (0, 4), "forced": (4, 0)}
    assert got["high"].settings_hash == got["again"].settings_hash == got["forced"].settings_hash
    assert got["low"].settings_hash != got["high"].settings_hash
    assert not got["again"].overwrite and got["forced"].overwrite
    # a job that keeps identical results counts their labels as its own (its per_label is the job's output)
    assert got["again"].summary["per_label"] == got["high"].summary["per_label"] != {}
    assert got["again"].tasks_labeled == 4
    # every task keeps the result of each job that labeled it, with that job's uid
    for task in client.tasks.list(project=project):
        results = client.tasks.results(task.uid)
        assert [r["job_uid"] for r in results] == [got["low"].uid, got["high"].uid, got["forced"].uid]


def test_export_takes_the_newest_result_or_those_of_one_job(jobs):
    client, project, root, got = jobs
    store = client._store
    newest = _coco(store, project, root / "newest")
    low = _coco(store, project, root / "low", job=got["low"].uid)
    high = _coco(store, project, root / "high", job=got["high"].uid)
    kept = _coco(store, project, root / "kept", job=got["again"].uid)  # the job that kept high's results
    print("annotations: newest", len(newest["annotations"]), "low", len(low["annotations"]))
    assert [i["file_name"] for i in newest["images"]] == [i["file_name"] for i in low["images"]] == IMAGES
    assert min(a["score"] for a in newest["annotations"]) >= 0.6
    assert min(a["score"] for a in low["annotations"]) < 0.6 <= max(a["score"] for a in low["annotations"])
    assert len(low["annotations"]) > len(newest["annotations"])
    assert kept["annotations"] == high["annotations"] and high["annotations"]
    # the forced job's results equal high's (same settings, same model): the newest are those
    assert [(a["image_id"], a["category_id"]) for a in newest["annotations"]] == [
        (a["image_id"], a["category_id"]) for a in high["annotations"]
    ]


def test_the_docs_monitoring_example_labels_tasks_for_other_settings(jobs, capsys):
    """The docs' monitoring example (0.85) after jobs at 0.3 and 0.6: other settings, so it labels every task."""
    client, project, _, _ = jobs
    with Avala(home=client.home, device="cpu") as worker_client:  # with its background worker
        done = _run(MONITOR, worker_client, {"proj_abc123": project})["job"]
    out = capsys.readouterr().out
    assert done.status == "completed" and done.tasks_labeled == 4 and done.skipped_items == 0
    assert "Labeled 4 tasks" in out


def test_the_fingerprint_is_stable_and_covers_the_settings(tmp_path):
    base = {"model": "yolo11n", "model_type": DET, "confidence_threshold": 0.5, "labels": ["person", "car"],
            "label_map": {"person": "pedestrian"}, "aggregation": None}  # fmt: skip
    same = {**base, "labels": ["car", "person"], "confidence_threshold": 0.5000000001}
    assert settings_fingerprint(job_settings(base)) == settings_fingerprint(job_settings(same))
    for change in ({"labels": ["car"]}, {"label_map": {"person": "walker"}}, {"confidence_threshold": 0.6},
                   {"label_map": None}, {"model": "yolo11n-onnx"}):  # fmt: skip
        assert settings_fingerprint(job_settings({**base, **change})) != settings_fingerprint(job_settings(base))
    with Store(tmp_path / "home") as store:
        project = store.projects.create("p", models={DET: {"model": "yolo11n", "label_map": {"person": "pedestrian"}}})
        one = store.jobs.create(project["uid"], model_type=DET, labels=["person", "car"], confidence_threshold=0.5)
        two = store.jobs.create(project["uid"], model_type=DET, labels=["car", "person"], confidence_threshold=0.5)
        assert one["settings_hash"] == two["settings_hash"] == settings_fingerprint(job_settings(base))
        assert one["label_map"] == {"person": "pedestrian"}
