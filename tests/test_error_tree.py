"""Issue 9, item 9: every error a user can meet is an ``AvalaInferError``, the specific one, with a message that
names what was wrong. The public API (``Engine``, ``label``, the ``Avala`` client, the store) is walked with bad
inputs on real stores in a temporary folder and the real models."""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Callable
from typing import Any

import pytest

from avala_infer import Avala, Engine, Text, errors, label
from avala_infer.errors import (
    AvalaInferError,
    ConfigError,
    LeaseLost,
    ModelSpecError,
    NotFoundError,
    StoreError,
    UnknownLabelError,
    UnknownModelError,
    UnsafeURLError,
    UnsupportedInputError,
)
from tests.conftest import ASSETS, need

pytestmark = [pytest.mark.assets]

DET, NER, CLS = "object_detection", "named_entity_recognition", "text_classification"


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """A client over a store in a temporary folder (no worker), an image and a text project, two engines."""
    tmp = tmp_path_factory.mktemp("error-tree")
    bus = str(need(ASSETS / "images" / "ultralytics" / "bus.jpg"))
    need(ASSETS / "models" / "ner-minilm-conll03")
    (tmp / "bad.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    (tmp / "incomplete.yaml").write_text("name: incomplete\n", encoding="utf-8")
    client = Avala(home=tmp / "home", worker=False)
    image = client.projects.create("streets", models={DET: "yolo11n-onnx"})
    text_models = {NER: "ner-minilm-conll03", CLS: "sentiment-minilm-sst2"}  # known models: projects check them
    text = client.projects.create("notes", data_type="text", models=text_models)
    cancelled = client.auto_label_jobs.create(image.uid)
    client.auto_label_jobs.cancel(cancelled.uid)
    yield types.SimpleNamespace(
        tmp=tmp,
        bus=bus,
        client=client,
        image=image.uid,
        text=text.uid,
        cancelled=cancelled.uid,
        detector=Engine("yolo11n-onnx", device="cpu"),
        ner=Engine("ner-minilm-conll03", device="cpu"),
    )
    client.close()


def _label(ctx, **options):
    settings = {"model": "yolo11n-onnx", "out": ctx.tmp / "out", "formats": ["jsonl"], "device": "cpu"}
    return label(ctx.bus, **{**settings, **options})


# (id, call, the exception class it must raise, a pattern its message must contain)
CASES: list[tuple[str, Callable[[Any], Any], type[AvalaInferError], str]] = [
    # ------------------------------------------------------------------ Engine and its options
    ("engine unknown model", lambda c: Engine("nope-model"), UnknownModelError, "unknown model 'nope-model'"),
    ("engine missing weights", lambda c: Engine(c.tmp / "x.onnx"), UnknownModelError, r"no file at .*x\.onnx"),
    ("engine bad device", lambda c: Engine("yolo11n-onnx", device="tpu"), ConfigError, "unknown device 'tpu'"),
    ("engine bad workers", lambda c: Engine("yolo11n-onnx", device="cpu", workers=-1), ConfigError, "workers"),
    ("engine batch size text", lambda c: Engine("yolo11n-onnx", device="cpu", batch_size="many"), ModelSpecError,
     "input_size and batch_size must be whole numbers"),
    ("engine unreadable spec", lambda c: Engine(c.tmp / "bad.yaml"), ModelSpecError, "cannot read model spec"),
    ("engine incomplete spec", lambda c: Engine(c.tmp / "incomplete.yaml"), ModelSpecError, "lacks required"),
    ("predict threshold", lambda c: list(c.detector.predict(c.bus, confidence_threshold=1.5)), ConfigError,
     "confidence_threshold must be between 0 and 1, got 1.5"),
    ("predict threshold text", lambda c: list(c.detector.predict(c.bus, confidence_threshold="high")), ConfigError,
     "confidence_threshold must be a number between 0 and 1, got 'high'"),
    ("predict iou", lambda c: list(c.detector.predict(c.bus, iou_threshold=-1)), ConfigError, "iou_threshold"),
    ("predict max_det", lambda c: list(c.detector.predict(c.bus, max_det=0)), ConfigError, "max_det"),
    ("predict top_k", lambda c: list(c.detector.predict(c.bus, top_k=0)), ConfigError, "top_k"),
    ("predict unknown label", lambda c: list(c.detector.predict(c.bus, labels=["unicorn"])), UnknownLabelError,
     r"unknown label\(s\) \['unicorn'\]"),
    ("predict labels string", lambda c: list(c.detector.predict(c.bus, labels="car")), ConfigError,
     "labels must be a list of label names"),
    ("predict label threshold", lambda c: list(c.detector.predict(c.bus, label_thresholds={"car": 3})),
     ConfigError, "threshold for 'car' must be between 0 and 1"),
    ("predict label map", lambda c: list(c.detector.predict(c.bus, label_map={"unicorn": "x"})), UnknownLabelError,
     "label_map names"),
    ("predict text to a detector", lambda c: list(c.detector.predict(Text("a car"))), UnsupportedInputError,
     "reads images, but was given a text string"),
    ("predict an int", lambda c: list(c.detector.predict(5)), UnsupportedInputError, r"cannot read 5 \(int\)"),
    ("predict an int in a list", lambda c: list(c.detector.predict([c.bus, 5])), UnsupportedInputError,
     r"cannot read 5 \(int\)"),
    ("predict image to NER", lambda c: list(c.ner.predict(c.bus)), UnsupportedInputError, "reads text"),
    ("predict aggregation", lambda c: list(c.ner.predict(Text("Paris"), aggregation="word")), ConfigError,
     "aggregation must be one of none, simple, first, average, max"),
    # ------------------------------------------------------------------ label()
    ("label unknown format", lambda c: _label(c, formats=["xml"]), ConfigError, "unknown output format"),
    ("label no format", lambda c: _label(c, formats=[]), ConfigError, "no output format given"),
    ("label format for the type", lambda c: _label(c, formats=["conll"]), ConfigError,
     "cannot hold object_detection annotations"),
    ("label mask format", lambda c: _label(c, formats=["coco"], mask_format="png"), ConfigError, "mask_format"),
    ("label threshold", lambda c: _label(c, confidence_threshold=-1), ConfigError, "confidence_threshold"),
    ("label out is a file", lambda c: _label(c, out=c.tmp / "bad.yaml"), ConfigError,
     "cannot use .*bad.yaml as the output folder"),
    ("label unknown model", lambda c: _label(c, model="yolo99"), UnknownModelError, "unknown model 'yolo99'"),
    # ------------------------------------------------------------------ client.projects
    ("project without a name", lambda c: c.client.projects.create(None), ConfigError, "a project needs a name"),
    ("project models not a mapping", lambda c: c.client.projects.create("x", models=["yolo11n"]), ConfigError,
     "models must map a model type to a model"),
    ("project model None", lambda c: c.client.projects.create("x", models={DET: None}), ConfigError,
     r"models\['object_detection'\] is None"),
    ("project unknown model type", lambda c: c.client.projects.create("x", models={"detection": "yolo11n"}),
     ConfigError, "unknown model type 'detection'"),
    ("project model for other media", lambda c: c.client.projects.create("x", models={NER: "ner"}), ConfigError,
     "a image project cannot use a named_entity_recognition model"),
    ("project ontology int", lambda c: c.client.projects.create("x", ontology=5), ConfigError,
     "ontology must be a list of label names"),
    ("project ontology string", lambda c: c.client.projects.create("x", ontology="car"), ConfigError,
     "ontology must be a list of label names"),
    ("project data type", lambda c: c.client.projects.create("x", data_type="video"), ConfigError, "data_type"),
    ("project get", lambda c: c.client.projects.get("proj_nope"), NotFoundError, "no project 'proj_nope'"),
    ("project update uid", lambda c: c.client.projects.update("proj_nope", name="y"), NotFoundError,
     "no project 'proj_nope'"),
    ("project update empty name", lambda c: c.client.projects.update(c.image, name=" "), ConfigError,
     "a project needs a name"),
    ("project list limit", lambda c: c.client.projects.list(limit=0), ConfigError, "limit must be between 1 and"),
    ("project list limit text", lambda c: c.client.projects.list(limit="ten"), ConfigError,
     "limit must be a whole number"),
    ("project list cursor", lambda c: c.client.projects.list(cursor="zz"), ConfigError, "bad cursor 'zz'"),
    ("import into unknown project", lambda c: c.client.projects.import_items("proj_nope", [c.bus]), NotFoundError,
     "no project 'proj_nope'"),
    ("import an int", lambda c: c.client.projects.import_items(c.image, [5]), UnsupportedInputError,
     r"cannot import 5 \(int\)"),
    ("import an image into text", lambda c: c.client.projects.import_items(c.text, [c.bus]), UnsupportedInputError,
     "reads text, but .*bus.jpg is an image"),
    # ------------------------------------------------------------------ client.auto_label_jobs
    ("job of unknown project", lambda c: c.client.auto_label_jobs.create("proj_nope", model_type=DET),
     NotFoundError, "no project 'proj_nope'"),
    ("job model type unknown", lambda c: c.client.auto_label_jobs.create(c.image, model_type="detection"),
     ConfigError, "unknown model type 'detection'"),
    ("job model type not served", lambda c: c.client.auto_label_jobs.create(c.image, model_type=NER), ConfigError,
     "has no model for named_entity_recognition"),
    ("job model type ambiguous", lambda c: c.client.auto_label_jobs.create(c.text), ConfigError,
     "pass model_type"),
    ("job threshold", lambda c: c.client.auto_label_jobs.create(c.image, confidence_threshold=2), ConfigError,
     "confidence_threshold must be between 0 and 1, got 2.0"),
    ("job threshold text", lambda c: c.client.auto_label_jobs.create(c.image, confidence_threshold="x"),
     ConfigError, "confidence_threshold must be a number"),
    ("job labels string", lambda c: c.client.auto_label_jobs.create(c.image, labels="car"), ConfigError,
     "labels must be a list of label names"),
    ("job labels int", lambda c: c.client.auto_label_jobs.create(c.image, labels=5), ConfigError,
     "labels must be a list of label names"),
    ("job aggregation not NER", lambda c: c.client.auto_label_jobs.create(c.image, aggregation="first"),
     ConfigError, "aggregation applies to named_entity_recognition jobs only"),
    ("job aggregation unknown", lambda c: c.client.auto_label_jobs.create(c.text, model_type=NER, aggregation="w"),
     ConfigError, "aggregation must be one of"),
    ("job get", lambda c: c.client.auto_label_jobs.get("job_nope"), NotFoundError, "no auto-label job 'job_nope'"),
    ("job wait", lambda c: c.client.auto_label_jobs.wait("job_nope"), NotFoundError, "no auto-label job"),
    ("job cancel", lambda c: c.client.auto_label_jobs.cancel("job_nope"), NotFoundError, "no auto-label job"),
    ("job cancel twice", lambda c: c.client.auto_label_jobs.cancel(c.cancelled), ConfigError, "already cancelled"),
    ("job list cursor", lambda c: c.client.auto_label_jobs.list(cursor="x"), ConfigError, "bad cursor 'x'"),
    ("job list limit", lambda c: c.client.auto_label_jobs.list(limit=5000), ConfigError, "limit must be between"),
    # ------------------------------------------------------------------ datasets, tasks, results
    ("dataset get", lambda c: c.client.datasets.get("ds_nope"), NotFoundError, "no dataset 'ds_nope'"),
    ("dataset items", lambda c: c.client.datasets.list_items("ds_nope"), NotFoundError, "no dataset 'ds_nope'"),
    ("task get", lambda c: c.client.tasks.get("task_nope"), NotFoundError, "no task 'task_nope'"),
    ("task results", lambda c: c.client.tasks.results("task_nope"), NotFoundError, "no task 'task_nope'"),
    ("task complete", lambda c: c.client.tasks.complete("task_nope"), NotFoundError, "no task 'task_nope'"),
    ("task reject", lambda c: c.client.tasks.reject("task_nope", reason="x"), NotFoundError, "no task"),
    ("task list status", lambda c: c.client.tasks.list(status="done"), ConfigError, "task status must be one of"),
    ("result accept", lambda c: c.client.results.accept("res_nope"), NotFoundError, "no result 'res_nope'"),
    # ------------------------------------------------------------------ client.agents
    ("agent events", lambda c: c.client.agents.create(name="a", events=["task.done"]), ConfigError,
     r"unknown event type\(s\) \['task.done'\]"),
    ("agent url scheme", lambda c: c.client.agents.create(name="a", events=["task.created"], callback_url="ftp://x"),
     UnsafeURLError, "ftp"),
    ("agent metadata url",
     lambda c: c.client.agents.create(name="a", events=["task.created"], callback_url="http://169.254.169.254/x"),
     UnsafeURLError, "169.254.169.254"),
    ("agent name", lambda c: c.client.agents.create(name="", events=["task.created"]), ConfigError, "name"),
    ("agent project", lambda c: c.client.agents.create(name="a", events=["task.created"], project="proj_nope"),
     NotFoundError, "no project 'proj_nope'"),
    ("agent task types", lambda c: c.client.agents.create(name="a", events=["task.created"], task_types=["x"]),
     ConfigError, "unknown model type 'x'"),
    ("agent get", lambda c: c.client.agents.get("agent_nope"), NotFoundError, "no agent 'agent_nope'"),
    ("agent update", lambda c: c.client.agents.update("agent_nope", name="b"), NotFoundError, "no agent"),
    ("agent delete", lambda c: c.client.agents.delete("agent_nope"), NotFoundError, "no agent"),
    ("agent test", lambda c: c.client.agents.test("agent_nope"), NotFoundError, "no agent"),
    ("agent executions", lambda c: c.client.agents.list_executions("agent_nope"), NotFoundError, "no agent"),
    ("agent lease", lambda c: c.client.agents.lease_executions("agent_nope"), NotFoundError, "no agent"),
    ("agent lease limit", lambda c: c.client.agents.lease_executions("agent_nope", limit="ten"), ConfigError,
     "limit"),
    ("agent respond", lambda c: c.client.agents.respond("exe_nope", action="approve"), NotFoundError,
     "no execution 'exe_nope'"),
    ("agent respond action", lambda c: c.client.agents.respond("exe_nope", action="maybe"), ConfigError,
     "action must be one of approve, reject, flag, skip"),
    # ------------------------------------------------------------------ the store underneath
    ("extend ontology of unknown project", lambda c: c.client._store.projects.extend_ontology("proj_nope", ["a"]),
     NotFoundError, "no project 'proj_nope'"),
    ("extend ontology with an int", lambda c: c.client._store.projects.extend_ontology(c.image, 5), ConfigError,
     "labels must be a list of label names"),
    ("extend ontology with a string", lambda c: c.client._store.projects.extend_ontology(c.image, "car"), ConfigError,
     "labels must be a list of label names"),
    ("extend ontology with an empty name", lambda c: c.client._store.projects.extend_ontology(c.image, ["car", ""]),
     ConfigError, "non-empty names"),
    ("record a batch without the lease",
     lambda c: c.client._store.jobs.record_batch({"uid": c.cancelled}, "me", [], 60), LeaseLost,
     "no longer held by me"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "expected", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_the_specific_avala_infer_error(ctx, call, expected, pattern):
    with pytest.raises(Exception) as caught:  # noqa: B017 (any exception: its type is what is checked)
        call(ctx)
    error = caught.value
    assert isinstance(error, AvalaInferError), f"{type(error).__module__}.{type(error).__name__}: {error}"
    assert type(error) is expected, f"{type(error).__name__} instead of {expected.__name__}: {error}"
    assert re.search(pattern, str(error)), str(error)


def test_bad_manifest_lines_are_reported_not_raised(ctx):
    """A manifest is read as the import goes: a bad line (not JSON, no path) is reported with its line number,
    like any source that names nothing, and the rest is imported; no json/csv/Unicode error escapes."""
    manifest = ctx.tmp / "list.jsonl"
    manifest.write_text(f'{{"path": "{ctx.bus}"}}\n{{"path": \n["x"]\n', encoding="utf-8")
    table = ctx.tmp / "list.csv"
    table.write_bytes(b"path\n\xff\xfe.jpg\n")
    report = ctx.client.projects.import_items(ctx.image, [manifest, table])
    assert (report.created + report.existing, report.failed_count) == (1, 3)
    errors_by_source = {f["source"]: f["error"] for f in report.failed}
    assert errors_by_source[f"{manifest}:2"].startswith("not a JSON object")
    assert errors_by_source[f"{manifest}:3"].startswith("no string 'path' field")
    assert errors_by_source[str(table)].startswith("manifest is not UTF-8 text")


def test_every_error_class_is_in_the_tree_and_drawn_in_its_docstring():
    classes = [obj for _, obj in inspect.getmembers(errors, inspect.isclass) if obj.__module__ == errors.__name__]
    assert len(classes) >= 15
    for cls in classes:
        assert issubclass(cls, AvalaInferError), cls
        assert re.search(rf"\b{cls.__name__}\b", errors.__doc__), f"{cls.__name__} is not drawn in errors.py"
    assert issubclass(LeaseLost, StoreError)
