"""Open-vocabulary detection (object_detection on transformers: OWLv2, OWL-ViT, Grounding DINO): boxes and scores
equal the transformers references on the same tiny random-weight models and real images; several prompts of one
label merge by NMS; a run's labels are the vocabulary through label(), the CLI and a dry run's per-prompt counts.

No pretrained weights of these families are here: each model is built from its config (tiny, seeded), its heads
scaled down so that scores spread over (0, 1) instead of saturating, and saved with a processor whose tokenizer is
built offline (a small CLIP BPE vocabulary for OWL; the shared MiniLM's BERT uncased vocabulary for Grounding DINO).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType
from tests.conftest import ASSETS, VAL_IMAGES, need
from tests.coverage_open_vocab import grounding_dino_folder, owl_folder, owl_spec

TOLERANCE = 1e-4  # pixels and scores


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("open_vocab")
    return {
        "owlv2": owl_folder(root, "owlv2"),
        "owlvit": owl_folder(root, "owlvit"),
        "grounding-dino": grounding_dino_folder(root),
    }


def _images() -> list[Path]:
    photos = [need(ASSETS / "images" / "ultralytics" / name) for name in ("bus.jpg", "zidane.jpg")]
    return photos + sorted(need(VAL_IMAGES).glob("*.jpg"))[:4]


def _spec(folder: Path, labels=("person", "car", "dog"), **params) -> ModelSpec:
    return ModelSpec(
        name=f"tiny-{folder.name}", model_type=ModelType.OBJECT_DETECTION, backend="transformers",
        weights=str(folder), labels=tuple(labels), params=params,
    )  # fmt: skip


def _rgb(path: Path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(path))[..., ::-1])


def _rows(detections) -> list[tuple]:
    """(label, score, box) rows, sorted by label then score: the order two equal results share."""
    rows = [(str(n), float(s), np.asarray(b, dtype=np.float64)) for n, s, b in
            zip(detections["labels"], detections["scores"], detections["boxes"])]  # fmt: skip
    return sorted(rows, key=lambda row: (row[0], -row[1]))


def _assert_same(ours, reference: list[tuple], what: str) -> float:
    mine = _rows({"labels": ours.class_name, "scores": ours.confidence, "boxes": ours.xyxy})
    assert [r[0] for r in mine] == [r[0] for r in reference], what
    worst = 0.0
    for (_, score, box), (_, ref_score, ref_box) in zip(mine, reference):
        worst = max(worst, abs(score - ref_score), float(np.abs(box - ref_box).max()))
    assert worst <= TOLERANCE, f"{what}: differs by {worst}"
    return worst


def _clipped(boxes, height: int, width: int) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.minimum(np.maximum(boxes, 0), [width, height, width, height])


@pytest.mark.parametrize("family", ["owlv2", "owlvit"])
def test_owl_equals_the_pipeline_and_post_process_object_detection(tiny_models, family):
    """Batched over six real images, labels as prompts: the rows of the ``zero-shot-object-detection`` pipeline
    (which runs each label alone; its boxes are whole pixels), and its float boxes from the processor's
    ``post_process_object_detection`` (clipped to the image, as ours), within 1e-4."""
    import torch
    from PIL import Image
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, pipeline

    from avala_infer import Engine

    folder, threshold = tiny_models[family], 0.45
    engine = Engine(_spec(folder), device="cpu", batch_size=3, streams=1)
    assert type(engine.predictor).__name__ == "OwlDetector" and engine.labels == ("person", "car", "dog")
    detector = pipeline("zero-shot-object-detection", model=str(folder), device="cpu")
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder, local_files_only=True).eval()
    images, total, worst = _images() if family == "owlvit" else _images()[:4], 0, 0.0
    for n, (prediction, path) in enumerate(zip(engine.predict(images, confidence_threshold=threshold), images)):
        assert prediction.ok, prediction.error
        image = Image.fromarray(_rgb(path))
        pixels = processor.image_processor(image, return_tensors="pt")  # once: OWLv2's takes seconds on a CPU
        reference = []
        for label in engine.labels:
            inputs = {**processor(text=[[label]], return_tensors="pt"), **pixels}
            with torch.inference_mode():
                (found,) = processor.image_processor.post_process_object_detection(
                    model(**inputs), threshold=threshold, target_sizes=[(image.height, image.width)]
                )
            boxes = _clipped(found["boxes"].numpy(), image.height, image.width)
            reference += [(label, float(s), b) for s, b in zip(found["scores"], boxes)]
        reference.sort(key=lambda row: (row[0], -row[1]))
        worst = max(worst, _assert_same(prediction.result, reference, f"{family} {path.name}"))
        total += len(prediction.result)
        if n >= (2 if family == "owlvit" else 1):
            continue  # the pipeline processes the image once per label: one or two images show it agrees
        piped = detector(image, candidate_labels=list(engine.labels), threshold=threshold)
        piped.sort(key=lambda row: (row["label"], -row["score"]))
        mine = prediction.result
        order = np.lexsort((-mine.confidence, mine.class_name.astype(str)))
        assert [row["label"] for row in piped] == list(mine.class_name[order])
        np.testing.assert_allclose([row["score"] for row in piped], mine.confidence[order], atol=TOLERANCE)
        # the pipeline's boxes are whole pixels (truncated) and not clipped to the image
        whole = np.array([[row["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] for row in piped]).reshape(-1, 4)
        limit = [image.width, image.height, image.width, image.height]
        np.testing.assert_array_equal(np.clip(whole, 0, limit), np.trunc(mine.xyxy[order]))
    print(f"{family}: {total} boxes on {len(images)} images equal the references within {worst:.1e}")
    assert total > 0


def test_grounding_dino_equals_post_process_grounded_object_detection(tiny_models):
    """Each label's rows equal ``post_process_grounded_object_detection`` of the model run on the processor's
    joined text ("person. car. dog."), its logits kept to that label's tokens (a box's score for a prompt is its
    best over the prompt's tokens), on six real images batched by size."""
    import torch
    from PIL import Image
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    from avala_infer import Engine

    folder, threshold = tiny_models["grounding-dino"], 0.3
    engine = Engine(_spec(folder, labels=("person", "red car", "dog")), device="cpu", batch_size=3, streams=1)
    predictor = engine.predictor
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder, local_files_only=True).eval()
    images, total, worst = _images(), 0, 0.0
    for prediction, path in zip(engine.predict(images, confidence_threshold=threshold), images):
        assert prediction.ok, prediction.error
        image = Image.fromarray(_rgb(path))
        inputs = processor(images=image, text=list(engine.labels), return_tensors="pt")
        assert torch.equal(inputs["input_ids"], predictor.text_inputs["input_ids"].cpu())  # the same joined text
        with torch.inference_mode():
            outputs = model(**inputs)
        reference = []
        for i, label in enumerate(engine.labels):
            tokens = predictor.prompt_tokens[i].cpu()
            masked = outputs.logits.clone()
            masked[..., : len(tokens)][..., ~tokens] = float("-inf")
            masked[..., len(tokens) :] = float("-inf")
            outputs_of_label = type(outputs)(logits=masked, pred_boxes=outputs.pred_boxes)
            (found,) = processor.post_process_grounded_object_detection(
                outputs_of_label, inputs["input_ids"], threshold=threshold, text_threshold=threshold,
                target_sizes=[(image.height, image.width)],
            )  # fmt: skip
            assert all(text and text in label for text in found["text_labels"])  # its tokens name it
            boxes = _clipped(found["boxes"].numpy(), image.height, image.width)
            reference += [(label, float(s), b) for s, b in zip(found["scores"], boxes)]
        reference.sort(key=lambda row: (row[0], -row[1]))
        worst = max(worst, _assert_same(prediction.result, reference, f"grounding-dino {path.name}"))
        total += len(prediction.result)
    print(f"grounding-dino: {total} boxes on {len(images)} images equal the reference within {worst:.1e}")
    assert total > 0


def test_several_prompts_of_one_label_merge_by_nms_at_the_runs_iou(tiny_models):
    """``car: [car, sedan, suv]``: the car rows are the NMS (at the run's iou) of the rows the three prompts give
    as labels of their own, each keeping the prompt that scored it; a label with one prompt is left as it is."""
    import torch
    import torchvision

    from avala_infer import Engine

    folder, images, iou = tiny_models["owlvit"], _images()[:3], 0.5
    alone = Engine(_spec(folder), device="cpu", vocabulary=["person", "car", "sedan", "suv"])
    merged = Engine(_spec(folder, labels=("person", "car"), prompts={"car": ["car", "sedan", "suv"]}), device="cpu")
    options = {"confidence_threshold": 0.4, "iou_threshold": iou}
    merged_any = False
    for one, many in zip(alone.predict(images, **options), merged.predict(images, **options)):
        a, m = one.result, many.result
        person_a, person_m = a[a.class_name == "person"], m[m.class_name == "person"]
        np.testing.assert_array_equal(person_a.xyxy, person_m.xyxy)  # one prompt: no NMS
        assert set(person_m.prompt) <= {"person"}
        cars = a[np.isin(a.class_name, ["car", "sedan", "suv"])]
        keep = torchvision.ops.nms(torch.from_numpy(cars.xyxy), torch.from_numpy(cars.confidence), iou).numpy()
        expected, got = cars[keep], m[m.class_name == "car"]
        order = np.argsort(-got.confidence, kind="stable")
        np.testing.assert_array_equal(got.xyxy[order], expected.xyxy)
        np.testing.assert_array_equal(got.confidence[order], expected.confidence)
        assert list(got.prompt[order]) == list(expected.class_name)  # the prompt that scored each box
        merged_any |= len(keep) < len(cars) and len(set(got.prompt)) > 1
    assert merged_any  # some overlapping boxes of different prompts did merge, and more than one prompt won


def test_label_takes_labels_as_the_vocabulary_of_a_prompted_model(tiny_models, tmp_path):
    """label(labels=) looks for exactly those texts (not the spec's), writes them as COCO categories; a dry run's
    summary counts boxes per prompt, its counts agreeing with the per-label ones."""
    from avala_infer import label

    spec = owl_spec(tmp_path / "owl.yaml", tiny_models["owlvit"], ["dog"], params="prompts: {car: [car, sedan]}")
    images = _images()[:4]
    report = label(images, str(spec), out=tmp_path / "run", formats=["coco"], labels=["person", "car"],
                   confidence_threshold=0.45, device="cpu")  # fmt: skip
    coco = json.loads((tmp_path / "run" / "annotations.coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["person", "car"]
    assert len(coco["annotations"]) == report.summary["annotations"] > 0
    dry = label(images, str(spec), out=tmp_path / "dry", dry_run=True, labels=["person", "car"],
                confidence_threshold=0.45, device="cpu")  # fmt: skip
    summary = json.loads((tmp_path / "dry" / "summary.json").read_text())
    assert summary["per_label"] == report.summary["per_label"]
    per_prompt = summary["per_prompt"]
    assert set(per_prompt) <= {"person", "car"} and set(per_prompt.get("car", {})) <= {"car", "sedan"}
    for name, prompts in per_prompt.items():
        assert sum(p["annotations"] for p in prompts.values()) == summary["per_label"].get(name, 0)
        for counts in prompts.values():
            assert counts["predicted"] >= counts["annotations"] and counts["sweep"][0] == counts["predicted"]
            assert 0.05 <= counts["mean_score"] <= counts["max_score"] <= 1
    assert dry.summary["per_prompt"] == per_prompt


def test_the_cli_labels_a_folder_for_the_vocabulary_it_is_given(tiny_models, tmp_path):
    """`avala-infer label DIR --model spec --labels person,dog`: the labels are what the model looks for."""
    from click.testing import CliRunner

    from avala_infer.cli import cli

    folder = tmp_path / "images"
    folder.mkdir()
    for path in _images()[:3]:
        (folder / path.name).symlink_to(path)
    spec = tmp_path / "gdino.yaml"
    spec.write_text(
        f"name: tiny-gdino\nmodel_type: object_detection\nbackend: transformers\n"
        f"weights: {tiny_models['grounding-dino']}\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["label", str(folder), "--model", str(spec), "--labels", "person, dog",
                                       "--confidence", "0.3", "-o", str(out), "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    names = {a["label"] for r in records for a in r["annotations"]}
    assert len(records) == 3 and names == {"person", "dog"}
    missing = CliRunner().invoke(cli, ["label", str(folder), "--model", str(spec), "-o", str(tmp_path / "none"),
                                        "--device", "cpu"])  # fmt: skip
    assert missing.exit_code == 1 and "is prompted" in missing.output


def test_an_auto_label_jobs_labels_are_the_vocabulary_of_its_prompted_model(tiny_models, tmp_path):
    """A job's labels are what its open-vocabulary model looks for: its stored results name only them, and the
    counts equal label() with the same vocabulary and threshold."""
    from avala_infer import label
    from avala_infer.jobs.runner import JobRunner
    from avala_infer.projects.imports import import_sources
    from avala_infer.store import Store, worker_id

    spec = owl_spec(tmp_path / "owl.yaml", tiny_models["owlvit"], ["dog"], name="tiny-owl-job")
    images = _images()[:3]
    with Store(tmp_path / "home") as store:
        project = store.projects.create("forklifts", models={"object_detection": str(spec)})["uid"]
        assert import_sources(store, project, [str(p) for p in images]).created == 3
        job = store.jobs.create(project, model_type="object_detection", confidence_threshold=0.45,
                                labels=["person", "car"])  # fmt: skip
        with JobRunner(store, worker_id(), device="cpu") as runner:
            finished = runner.run(store.jobs.claim(runner.worker, runner.lease_s, only=job["uid"]))
    assert finished["status"] == "completed", finished.get("error_message")
    summary = finished["summary"] if isinstance(finished["summary"], dict) else json.loads(finished["summary"])
    expected = label(images, str(spec), out=tmp_path / "same", labels=["person", "car"], confidence_threshold=0.45,
                     device="cpu").summary["per_label"]  # fmt: skip
    assert summary["per_label"] == expected and set(expected) == {"person", "car"}


def test_weights_of_another_family_and_prompts_grounding_dino_cannot_read_are_refused(tiny_models, tmp_path):
    from avala_infer import Engine
    from avala_infer.errors import ModelLoadError, ModelSpecError

    other = tmp_path / "vit"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ModelLoadError, match=r"'vit'.*grounding-dino, owlv2, owlvit"):
        Engine(_spec(other), device="cpu")
    with pytest.raises(ModelSpecError, match=r"cannot hold one: \['st. bernard'\]"):
        Engine(_spec(tiny_models["grounding-dino"], labels=("st. bernard",)), device="cpu")
    with pytest.raises(ModelSpecError, match="unknown params"):
        Engine(_spec(tiny_models["owlvit"], box_threshold=0.3), device="cpu")
