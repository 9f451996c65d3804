"""The client calls the CLI makes instead of opening the store itself: ``projects.extend_ontology``,
``auto_label_jobs.run`` (``auto-label create --run``) and ``projects.export`` with the Label Studio URL options.
Real SQLite, a real model (yolo11n on the CPU) and real images."""

from __future__ import annotations

import json

import pytest

from avala_infer import Avala
from avala_infer.errors import NotFoundError
from tests.conftest import VAL_IMAGES, need

IMAGES = ["000000000139.jpg", "000000000285.jpg", "000000000632.jpg"]


def test_extend_ontology_appends_only_new_labels_and_keeps_ids(tmp_path):
    with Avala(home=tmp_path / "home", worker=False) as client:
        project = client.projects.create("streets", ontology=["person", "car"])
        extended = client.projects.extend_ontology(project.uid, ["car", "bus", "truck"])
        assert extended.uid == project.uid
        assert extended.ontology == ["person", "car", "bus", "truck"]  # car keeps id 1; the new ones follow
        assert client.projects.get(project.uid).ontology == ["person", "car", "bus", "truck"]  # stored
        assert client.projects.extend_ontology(project.uid, ["person"]).ontology == extended.ontology  # no-op
        with pytest.raises(NotFoundError, match="no project 'proj_missing'"):
            client.projects.extend_ontology("proj_missing", ["x"])


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, weights_pt):
    """A project of three coco128 images and a job run to its end by ``client.auto_label_jobs.run``:
    (home, project uid, the finished job)."""
    home = tmp_path_factory.mktemp("client-methods") / "home"
    with Avala(home=home, worker=False) as client:
        project = client.projects.create("streets", models={"object_detection": "yolo11n"})
        client.projects.import_items(project.uid, [str(need(VAL_IMAGES / name)) for name in IMAGES])
        job = client.auto_label_jobs.create(project.uid, confidence_threshold=0.3)
        assert job.status == "pending"
        stopped = client.auto_label_jobs.run(job.uid, device="cpu", should_stop=lambda: True)
        assert stopped.status == "running"  # stopped after its first batch: left running, to be resumed
        finished = client.auto_label_jobs.run(job.uid, device="cpu")  # resumed by the next run
    return home, project.uid, finished


def test_run_labels_every_task_in_this_thread_and_resumes_a_stopped_job(labeled):
    home, uid, job = labeled
    assert job.status == "completed"
    assert (job.processed_items, job.successful_items, job.failed_items) == (3, 3, 0)
    assert job.attempts == 2  # claimed once by the stopped run, once by the run that finished it
    with Avala(home=home, worker=False) as client:
        assert {t.status for t in client.tasks.list(project=uid)} == {"labeled"}
        again = client.auto_label_jobs.run(job.uid, device="cpu")  # a finished job is not run again
        assert again.status == "completed" and again.attempts == 2
        with pytest.raises(NotFoundError):
            client.auto_label_jobs.run("job_missing", device="cpu")


def test_export_points_label_studio_tasks_at_the_url_prefix(labeled, tmp_path):
    home, uid, _ = labeled
    with Avala(home=home, worker=False) as client:
        files = client.projects.export(
            uid, tmp_path / "ls", ["labelstudio"], ls_root=VAL_IMAGES.parent, ls_url_prefix="https://ls.example/m"
        )
    assert sorted(f.name for f in files) == ["labelstudio.config.xml", "labelstudio.json"]
    tasks = json.loads((tmp_path / "ls" / "labelstudio.json").read_text(encoding="utf-8"))
    assert sorted(t["data"]["image"] for t in tasks) == [f"https://ls.example/m/val2017/{name}" for name in IMAGES]
