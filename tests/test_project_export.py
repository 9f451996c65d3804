"""Exports of a project's results from the store, read back by the tools that consume them: ontology class ids
stable across jobs, every result type round-tripping through ``record_to_prediction``, and the same files as a
direct ``label()`` run where the inputs are the same."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from avala_infer import Avala, ConfigError, Text, label
from avala_infer.errors import ItemError
from avala_infer.exporters.codecs import rle
from avala_infer.exporters.records import prediction_to_record, record_to_prediction
from avala_infer.jobs import Worker
from avala_infer.projects.exports import export_project, stored_prediction
from tests.conftest import ASSETS, VAL_IMAGES, need

BATCH_A = ["000000000139.jpg", "000000000285.jpg", "000000000632.jpg", "000000000724.jpg"]
BATCH_B = ["000000001584.jpg", "000000002006.jpg"]  # buses (COCO80 id 5), which job 2 adds to the ontology


def _run_jobs(home: Path) -> None:
    assert Worker(home, device="cpu", poll_s=0.05).run(until_idle=True) >= 1


def _results(client, project_uid: str, model_type: str = "object_detection") -> list[dict]:
    """The results an export writes by default: each task's newest, in task order."""
    return list(client._store.results.iter_latest(project_uid, model_type))


def _copy(names: list[str], folder: Path, source: Path = VAL_IMAGES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(need(source / name), folder / name)
    return folder.resolve()


@pytest.fixture(scope="module")
def detection(tmp_path_factory):
    """A detection project labeled by two jobs with different label sets (so the second labels every task
    again); an export after each job, and one of the first job's results after both."""
    root = tmp_path_factory.mktemp("det")
    home = root / "home"
    client = Avala(home=home, worker=False)
    project = client.projects.create("streets", models={"object_detection": "yolo11n"})
    client.projects.import_items(project.uid, [_copy(BATCH_A, root / "a")])
    first = client.auto_label_jobs.create(project.uid, model_type="object_detection", labels=["person", "car"])
    _run_jobs(home)
    export_project(client._store, project.uid, root / "out1", ["coco", "yolo", "jsonl"])
    client.projects.import_items(project.uid, [_copy(BATCH_B, root / "b")])
    second = client.auto_label_jobs.create(project.uid, model_type="object_detection", labels=["bus", "person"])
    _run_jobs(home)
    files = export_project(client._store, project.uid, root / "out2", ["coco", "yolo", "jsonl", "labelstudio"])
    export_project(client._store, project.uid, root / "first", ["coco"], job=first.uid)
    yield (
        client,
        project.uid,
        root,
        files,
        (client.auto_label_jobs.get(first.uid), client.auto_label_jobs.get(second.uid)),
    )
    client.close()


def test_coco_ids_follow_the_ontology_across_jobs(detection):
    from pycocotools.coco import COCO

    client, uid, root, files, (first, second) = detection
    assert first.status == second.status == "completed"
    # other labels, other settings: the second job labels batch A again (and batch B)
    assert (first.successful_items, second.successful_items, second.skipped_items) == (4, 6, 0)
    assert client.projects.get(uid).ontology == ["person", "car", "bus"]
    old = json.loads((root / "out1" / "annotations.coco.json").read_text())
    new = COCO(str(root / "out2" / "annotations.coco.json"))
    assert [c["name"] for c in old["categories"]] == ["person", "car"]
    assert [(c["id"], c["name"]) for c in new.dataset["categories"]] == [(1, "person"), (2, "car"), (3, "bus")]
    assert [i["file_name"] for i in new.dataset["images"]] == BATCH_A + BATCH_B
    # the first job's results, exported after the second job, keep their annotations and category ids
    kept = json.loads((root / "first" / "annotations.coco.json").read_text())
    assert kept["images"] == old["images"] and kept["annotations"] == old["annotations"]
    assert [c["name"] for c in kept["categories"]] == ["person", "car", "bus"]
    # by default each item's newest result: batch A as the second job (bus, person) labeled it
    names = {c["id"]: c["name"] for c in new.dataset["categories"]}
    batch_a = {i["id"] for i in new.dataset["images"][:4]}
    newest_a = {names[a["category_id"]] for a in new.dataset["annotations"] if a["image_id"] in batch_a}
    assert newest_a <= {"bus", "person"}
    used = {names[a["category_id"]] for a in new.dataset["annotations"]}
    assert {"person", "bus"} <= used  # job 2 had bus as its engine class 1; the export says 3
    assert len(new.loadRes(new.dataset["annotations"]).getAnnIds()) == len(new.dataset["annotations"])
    for image in new.dataset["images"]:
        stored = next(r for r in _results(client, uid) if r["key"] == image["file_name"])["annotations"]
        anns = new.loadAnns(new.getAnnIds(imgIds=image["id"]))
        assert [names[a["category_id"]] for a in anns] == [a["label"] for a in stored["annotations"]]
        for ann, want in zip(anns, stored["annotations"]):
            x, y, w, h = ann["bbox"]
            assert np.allclose([x, y, x + w, y + h], want["bbox"], atol=2e-3)
            assert ann["score"] == pytest.approx(want["score"], abs=1e-5)
    assert not list((root / "out2").glob("*.part")) and not list((root / "out2").glob("*.tmp"))


def test_jsonl_records_are_what_the_store_holds(detection):
    client, uid, root, files, _ = detection
    ontology = client.projects.get(uid).ontology
    records = [json.loads(line) for line in (root / "out2" / "annotations.jsonl").read_text().splitlines()]
    stored = _results(client, uid)
    assert len(records) == len(stored) == 6
    for record, row in zip(records, stored):
        want = {**row["annotations"], "source": row["path"]}
        want["annotations"] = [{**a, "class_id": ontology.index(a["label"])} for a in want["annotations"]]
        assert record == want
    # the stored class ids were the jobs' own: bus was 1 in job 2, it is 2 in the ontology
    bus_rows = [a for row in stored for a in row["annotations"]["annotations"] if a["label"] == "bus"]
    assert bus_rows and {a["class_id"] for a in bus_rows} == {1}


def test_yolo_export_reads_in_ultralytics(detection):
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    client, uid, root, files, _ = detection
    data = check_det_dataset(str(root / "out2" / "yolo" / "data.yaml"))
    assert data["nc"] == 3 and data["names"] == {0: "person", 1: "car", 2: "bus"}
    dataset = YOLODataset(img_path=data["val"], data=data, task="detect", imgsz=640, augment=False)
    by_name = {Path(lab["im_file"]).name: lab for lab in dataset.labels}
    assert set(by_name) == set(BATCH_A + BATCH_B)
    ontology = client.projects.get(uid).ontology
    for row in _results(client, uid):
        record, lab = row["annotations"], by_name[row["key"]]
        w, h = record["width"], record["height"]
        assert lab["cls"].flatten().tolist() == [ontology.index(a["label"]) for a in record["annotations"]]
        boxes = np.asarray([a["bbox"] for a in record["annotations"]], np.float32).reshape(-1, 4)
        xywh = np.stack(
            [(boxes[:, 0] + boxes[:, 2]) / 2 / w, (boxes[:, 1] + boxes[:, 3]) / 2 / h,
             (boxes[:, 2] - boxes[:, 0]) / w, (boxes[:, 3] - boxes[:, 1]) / h], 1,
        )  # fmt: skip
        assert np.allclose(lab["bboxes"], xywh, atol=1e-5)
    old_classes = (root / "out1" / "yolo" / "classes.txt").read_text().splitlines()
    assert old_classes == ["person", "car"] and (root / "out2" / "yolo" / "classes.txt").read_text().startswith(
        "person\ncar\n"
    )
    assert [p.name for p in files] == ["annotations.coco.json", "labels", "classes.txt", "data.yaml",
                                       "annotations.jsonl", "labelstudio.json", "labelstudio.config.xml"]  # fmt: skip


def test_export_refuses_what_it_cannot_write(detection, tmp_path):
    client, uid, root, files, _ = detection
    store = client._store
    with pytest.raises(ConfigError, match="cannot hold object_detection"):
        export_project(store, uid, tmp_path, ["conll"])
    with pytest.raises(ConfigError, match="holds image items"):
        export_project(store, uid, tmp_path, ["jsonl"], model_type="text_classification")
    with pytest.raises(ConfigError, match="no instance_segmentation results"):
        export_project(store, uid, tmp_path, ["coco"], model_type="instance_segmentation")
    record = _results(client, uid)[0]
    with pytest.raises(ConfigError, match="'person', which is not in the project's ontology"):
        record_to_prediction(record["annotations"], record["key"], record["path"], None, ["car"])
    other = client.projects.create("no-results", models={"object_detection": "yolo11n"})
    with pytest.raises(ConfigError, match="no results to export yet"):
        export_project(store, other.uid, tmp_path, ["coco"])


def test_a_label_dropped_from_the_ontology_is_a_clear_error(detection, tmp_path):
    client, uid, root, files, _ = detection
    ontology = client.projects.get(uid).ontology
    client.projects.update(uid, ontology=["car", "bus"])
    try:
        with pytest.raises(ConfigError, match=r"use label\(s\) \['person'\]"):
            export_project(client._store, uid, tmp_path / "x", ["coco"])
    finally:
        client.projects.update(uid, ontology=ontology)


def test_records_round_trip_for_masks_classes_and_entities(detection):
    """``record_to_prediction`` inverts ``prediction_to_record`` (class ids aside, which it remaps), for each of
    the six model types."""
    client, uid, root, files, _ = detection
    ontology = ["person", "car", "bus"]
    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:5] = True
    boxes = {"key": "a.jpg", "width": 6, "height": 4, "annotations": [
        {"label": "bus", "class_id": 2, "score": 0.9, "bbox": [2.0, 1.0, 5.0, 3.0],
         "segmentation": rle.encode(mask)}]}  # fmt: skip
    p = record_to_prediction(boxes, "a.jpg", "/x/a.jpg", None, ontology)
    assert p.detections.mask.shape == (1, 4, 6) and np.array_equal(p.detections.mask[0], mask)
    assert {k: v for k, v in prediction_to_record(p).items() if k != "source"} == boxes
    plain = {"key": "d.jpg", "width": 6, "height": 4, "annotations": [
        {"label": "car", "class_id": 1, "score": 0.5, "bbox": [0.5, 1.25, 3.0, 4.0]}]}  # fmt: skip
    p = record_to_prediction(plain, "d.jpg", "/x/d.jpg", None, ontology, model_type="object_detection")
    assert p.detections.mask is None and (p.width, p.height) == (6, 4)
    assert {k: v for k, v in prediction_to_record(p).items() if k != "source"} == plain
    image_classes = {"key": "f.jpg", "width": 6, "height": 4, "multi_label": False, "annotations": [
        {"label": "bus", "class_id": 2, "score": 0.7}, {"label": "car", "class_id": 1, "score": 0.2}]}  # fmt: skip
    p = record_to_prediction(image_classes, "f.jpg", "/x/f.jpg", None, ontology)
    assert p.text is None and not p.result.multi_label and list(p.result.class_id) == [2, 1]
    assert {k: v for k, v in prediction_to_record(p).items() if k != "source"} == image_classes
    semantic = {"key": "b.png", "width": 6, "height": 4, "annotations": [
        {"label": "car", "class_id": 1, "score": 0.75, "area": 6, "segmentation": rle.encode(mask)}]}  # fmt: skip
    p = record_to_prediction(semantic, "b.png", "/x/b.png", None, ontology, model_type="semantic_segmentation")
    assert p.result.labels == tuple(ontology) and np.array_equal(p.result.class_map == 1, mask)
    assert {k: v for k, v in prediction_to_record(p).items() if k != "source"} == semantic
    empty = record_to_prediction({"key": "c.png", "width": 6, "height": 4, "annotations": []}, "c.png", "/x/c.png",
                                 None, ontology, model_type="semantic_segmentation")  # fmt: skip
    assert empty.result.shape == (4, 6) and len(empty.result) == 0
    classes = {"key": "t", "multi_label": True, "annotations": [
        {"label": "car", "class_id": 1, "score": 0.8}, {"label": "person", "class_id": 0, "score": 0.3}]}  # fmt: skip
    p = record_to_prediction(classes, "t", None, "some text", ontology)
    assert p.result.multi_label and {k: v for k, v in prediction_to_record(p).items() if k != "source"} == {
        **classes, "text": "some text"}  # fmt: skip
    text = "Angela Merkel visited Paris"
    entities = {"key": "e", "annotations": [
        {"label": "bus", "class_id": 2, "score": 0.99, "start": 0, "end": 13, "text": "Angela Merkel",
         "word": "angela merkel"},
        {"label": "car", "class_id": 1, "score": 0.9, "start": 22, "end": 27, "text": "Paris", "word": "paris",
         "tag": "B-LOC"}]}  # fmt: skip
    p = record_to_prediction(entities, "e", None, text, ontology, model_type="named_entity_recognition")
    assert {k: v for k, v in prediction_to_record(p).items() if k != "source"} == {**entities, "text": text}
    # a text item stored as a file is read back from it
    path = root / "note.txt"
    path.write_text(text, encoding="utf-8")
    p = stored_prediction(entities, "note.txt", str(path), None, ontology, model_type="named_entity_recognition")
    assert p.text == text and p.source == str(path)


def test_text_project_exports_labelstudio_and_conll(tmp_path):
    need(ASSETS / "models" / "sentiment-minilm-sst2")
    need(ASSETS / "models" / "ner-minilm-conll03")
    texts = ["Angela Merkel met Emmanuel Macron in Paris on Tuesday .", "The film was a wonderful surprise ."]
    records = tmp_path / "news.jsonl"
    lines = ["Apple opened a new office in Berlin .", "I hated every minute of this boring movie ."]
    records.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines), encoding="utf-8")
    ontology = ["PER", "ORG", "LOC", "MISC", "negative", "positive"]
    with Avala(home=tmp_path / "home", worker=False) as client:
        project = client.projects.create(
            "reviews",
            data_type="text",
            ontology=ontology,
            models={"named_entity_recognition": "ner-minilm-conll03", "text_classification": "sentiment-minilm-sst2"},
        )
        report = client.projects.import_items(project.uid, [*(Text(t) for t in texts), records])
        assert (report.created, report.failed_count) == (4, 0)
        client.auto_label_jobs.create(project.uid, model_type="named_entity_recognition")
        client.auto_label_jobs.create(project.uid, model_type="text_classification")
        _run_jobs(client.home)
        store = client._store
        with pytest.raises(ConfigError, match="named_entity_recognition, text_classification"):
            export_project(store, project.uid, tmp_path / "x", ["jsonl"])
        ner_files = export_project(
            store, project.uid, tmp_path / "ner", ["conll", "labelstudio", "jsonl"], "named_entity_recognition"
        )
        cls_files = export_project(
            store, project.uid, tmp_path / "cls", ["labelstudio", "jsonl"], "text_classification"
        )
        stored = _results(client, project.uid, "text_classification")
    assert [p.name for p in ner_files][0] == "annotations.conll" and cls_files
    # CoNLL: the same file a direct label() run writes for the same texts and model
    label([*(Text(t) for t in texts), records], "ner-minilm-conll03", out=tmp_path / "direct", formats=["conll"],
          confidence_threshold=0.5, device="cpu")  # fmt: skip
    conll = (tmp_path / "ner" / "annotations.conll").read_text()
    assert conll == (tmp_path / "direct" / "annotations.conll").read_text()
    assert "Merkel I-PER" in conll and "Paris B-LOC" in conll
    tasks = json.loads((tmp_path / "ner" / "labelstudio.json").read_text())
    assert [t["data"]["text"] for t in tasks] == texts + lines
    spans = {(r["value"]["text"], r["value"]["labels"][0]) for t in tasks for r in t["predictions"][0]["result"]}
    assert ("Angela Merkel", "PER") in spans and ("Berlin", "LOC") in spans
    ner_jsonl = [json.loads(x) for x in (tmp_path / "ner" / "annotations.jsonl").read_text().splitlines()]
    assert all(a["class_id"] == ontology.index(a["label"]) for r in ner_jsonl for a in r["annotations"])
    # classification: choices are the stored best classes; class ids are ontology positions (4, 5), not 0, 1
    tasks = json.loads((tmp_path / "cls" / "labelstudio.json").read_text())
    assert [t["predictions"][0]["result"][0]["value"]["choices"] for t in tasks] == [
        [r["annotations"]["annotations"][0]["label"]] for r in stored
    ]
    choices = [t["predictions"][0]["result"][0]["value"]["choices"] for t in tasks]
    assert (choices[1], choices[3]) == (["positive"], ["negative"])  # "a wonderful surprise", "hated every minute"
    config = (tmp_path / "cls" / "labelstudio.config.xml").read_text()
    assert '<Choice value="negative"/>' in config and 'toName="text"' in config
    cls_jsonl = [json.loads(x) for x in (tmp_path / "cls" / "annotations.jsonl").read_text().splitlines()]
    assert [r["text"] for r in cls_jsonl] == texts + lines
    assert {a["class_id"] for r in cls_jsonl for a in r["annotations"]} == {4, 5}
    assert {a["class_id"] for r in stored for a in r["annotations"]["annotations"]} == {0, 1}


def test_semantic_project_export_equals_a_direct_run(tmp_path):
    need(ASSETS / "models" / "ppocrv4_det.onnx")
    folder = _copy(["page.png", "text.png", "astronaut.png"], tmp_path / "images", ASSETS / "images" / "skimage")
    with Avala(home=tmp_path / "home", worker=False) as client:
        project = client.projects.create("ocr", models={"semantic_segmentation": "ppocrv4-det"})
        client.projects.import_items(project.uid, [folder])
        client.auto_label_jobs.create(project.uid, confidence_threshold=0.3)
        _run_jobs(client.home)
        assert client.projects.get(project.uid).ontology == ["text"]
        export_project(client._store, project.uid, tmp_path / "export", ["coco", "masks"])
    label(folder, "ppocrv4-det", out=tmp_path / "direct", formats=["coco", "masks"], confidence_threshold=0.3,
          device="cpu")  # fmt: skip
    exported = json.loads((tmp_path / "export" / "annotations.coco.json").read_text())
    direct = json.loads((tmp_path / "direct" / "annotations.coco.json").read_text())
    assert exported["categories"] == direct["categories"] and exported["images"] == direct["images"]
    assert len(exported["annotations"]) == len(direct["annotations"]) >= 1
    page_id = next(i["id"] for i in exported["images"] if i["file_name"] == "page.png")
    assert page_id in {a["image_id"] for a in exported["annotations"]}  # the page's text
    for a, b in zip(exported["annotations"], direct["annotations"]):
        assert a.pop("score") == pytest.approx(b.pop("score"), abs=1e-5)
        assert a == b
    for name in ("page", "text", "astronaut"):
        ours = cv2.imread(str(tmp_path / "export" / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        theirs = cv2.imread(str(tmp_path / "direct" / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs)
    assert (tmp_path / "export" / "masks" / "classes.txt").read_text() == "0 unlabeled\n1 text\n"


def test_an_export_that_fails_mid_way_leaves_no_temporary_files(tmp_path):
    """A text item whose file is gone fails the export part-way: the writers are aborted, no scratch file
    (``*.part``, ``*.tmp``) and no half-written export stays, and the error names the item."""
    need(ASSETS / "models" / "sentiment-minilm-sst2")
    folder = tmp_path / "reviews"
    folder.mkdir()
    sentences = ["A wonderful surprise .", "Boring from start to end .", "A fine cast .", "I hated it ."]
    for i, sentence in enumerate(sentences):
        (folder / f"{i}.txt").write_text(sentence, encoding="utf-8")
    with Avala(home=tmp_path / "home", worker=False) as client:
        project = client.projects.create(
            "reviews", data_type="text", models={"text_classification": "sentiment-minilm-sst2"}
        )
        assert client.projects.import_items(project.uid, [folder]).created == len(sentences)
        client.auto_label_jobs.create(project.uid, model_type="text_classification")
        _run_jobs(client.home)
        (folder / "3.txt").unlink()  # read again at export: the last item fails after three were written
        out = tmp_path / "out"
        with pytest.raises(ItemError, match="3.txt"):
            export_project(client._store, project.uid, out, ["jsonl", "labelstudio"])
    assert sorted(p.name for p in out.iterdir()) == []  # no annotations.jsonl(.part), labelstudio.json(.tmp)
