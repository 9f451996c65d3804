"""Box-prompted segmentation: yolo11n's boxes prompt a tiny random SAM (instance_segmentation / transformers).

Parity: each instance's mask equals, pixel for pixel, what ``SamModel`` + ``SamProcessor.post_process_masks`` give
for the same image and the same boxes, one image at a time; the mask scores equal SAM's ``iou_scores``. The same
for SAM2 (``Sam2Model`` + ``Sam2Processor.post_process_masks``), picked from the folder's config.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from avala_infer.errors import ConfigError, ModelLoadError, ModelSpecError
from tests.conftest import VAL_IMAGES, need
from tests.coverage_box_prompted import (
    chain_spec,
    chain_spec_file,
    check_instances,
    tiny_sam2_folder,
    tiny_sam_folder,
)


@pytest.fixture(scope="session")
def tiny_sam(tmp_path_factory):
    return tiny_sam_folder(tmp_path_factory.mktemp("tiny-sam"))


@pytest.fixture(scope="session")
def tiny_sam2(tmp_path_factory):
    return tiny_sam2_folder(tmp_path_factory.mktemp("tiny-sam2"))


@pytest.fixture(scope="session")
def photos():
    """Six coco128 val2017 photos of several sizes and box counts (13, 1, 5, 2, 5 and 3 boxes at 0.25)."""
    names = ("000000000139", "000000000285", "000000000632", "000000000724", "000000000776", "000000000785")
    return [need(VAL_IMAGES / f"{name}.jpg") for name in names]


@pytest.fixture(scope="session")
def chain(tiny_sam):
    from avala_infer import Engine

    with Engine(chain_spec(tiny_sam), device="cpu", batch_size=4) as engine:
        yield engine


def _reference(model, processor, path, boxes, multimask: bool):
    """transformers one image at a time: (bool masks (n, H, W), scores (n,)) for ``boxes``; with ``multimask`` the
    mask SAM scores best of its three, as the chain keeps."""
    import torch

    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)  # the engine's decode: the same pixels
    inputs = processor(images=rgb, input_boxes=[boxes.tolist()], return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs, multimask_output=multimask)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])[0]
    scores = out.iou_scores[0]
    best = scores.argmax(1)
    rows = torch.arange(len(best))
    return masks[rows, best].numpy(), scores[rows, best].numpy()


@pytest.mark.parametrize("multimask", [False, True])
def test_masks_equal_post_process_masks(tiny_sam, photos, multimask):
    """Batches of 4 images with different box counts (the decoder takes every box of a batch at once)."""
    from transformers import SamModel, SamProcessor

    from avala_infer import Engine

    model = SamModel.from_pretrained(str(tiny_sam)).eval()
    processor = SamProcessor.from_pretrained(str(tiny_sam))
    images = photos if not multimask else photos[:4]
    with Engine(chain_spec(tiny_sam, multimask_output=multimask), device="cpu", batch_size=4) as engine:
        predictions = list(engine.predict(images))
    compared = 0
    for path, p in zip(images, predictions):
        check_instances(p)
        d = p.detections
        masks, _ = _reference(model, processor, path, d.xyxy, multimask)
        assert np.array_equal(d.mask, masks), f"{path.name}: {(d.mask != masks).sum()} pixels differ"
        compared += len(d)
    assert compared >= (29 if not multimask else 21)


def _sam2_reference(model, processor, path, boxes, multimask: bool):
    """As :func:`_reference`, with ``Sam2Processor``: its square resize, float32 boxes, one upsampling."""
    import torch

    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    inputs = processor(images=rgb, input_boxes=[boxes.tolist()], return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs, multimask_output=multimask)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0]
    scores = out.iou_scores[0]
    best = scores.argmax(1)
    rows = torch.arange(len(best))
    return masks[rows, best].numpy(), scores[rows, best].numpy()


@pytest.mark.parametrize("multimask", [False, True])
def test_sam2_masks_equal_post_process_masks(tiny_sam2, photos, multimask):
    """A SAM2 folder runs in the same chain, masks and scores as transformers gives them one image at a time. The
    first and last photos share a batch (the same detector input shape; 13 and 3 boxes): the image encoder runs
    once for both and the decoder takes all 16 boxes, every feature level gathered per box (decoding the last
    photo's boxes with the first photo's high-resolution levels changes ~29,000 of its pixels)."""
    from transformers import Sam2Model, Sam2Processor

    from avala_infer import Engine

    model = Sam2Model.from_pretrained(str(tiny_sam2)).eval()
    processor = Sam2Processor.from_pretrained(str(tiny_sam2))
    with Engine(chain_spec(tiny_sam2, multimask_output=multimask), device="cpu", batch_size=4) as engine:
        assert engine.predictor.family == "sam2"
        predictions = list(engine.predict(photos))
    compared = 0
    for path, p in zip(photos, predictions):
        check_instances(p)
        d = p.detections
        masks, scores = _sam2_reference(model, processor, path, d.xyxy, multimask)
        assert np.array_equal(d.mask, masks), f"{path.name}: {(d.mask != masks).sum()} pixels differ"
        np.testing.assert_allclose(d.mask_score, scores, rtol=0, atol=1e-6)
        compared += len(d)
    assert compared >= 29


def test_sam2_chain_writes_coco_masks(tiny_sam2, photos, tmp_path):
    """The whole path from a spec file naming a SAM2 folder: ``label`` writes one RLE mask per instance, each
    decoding to the instance's mask, under the detector's categories."""
    from pycocotools import mask as mask_utils

    from avala_infer import Engine
    from avala_infer.labeling import label

    spec = tmp_path / "chain.yaml"
    spec.write_text(
        f"name: yolo11n-tiny-sam2\nmodel_type: instance_segmentation\nbackend: transformers\nweights: {tiny_sam2}\n"
        "params:\n  detector: yolo11n\n"
    )
    with Engine(str(spec), device="cpu") as engine:
        predictions = list(engine.predict(photos[:3]))
        label(photos[:3], engine, out=tmp_path / "out", formats=["coco"])
    coco = json.loads((tmp_path / "out" / "annotations.coco.json").read_text())
    expected = [m for p in predictions for m in p.detections.mask]
    assert len(coco["annotations"]) == len(expected) > 0
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert {"person", "tv"} <= {names[a["category_id"]] for a in coco["annotations"]}
    decoded = sorted(int(mask_utils.decode(a["segmentation"]).sum()) for a in coco["annotations"])
    assert decoded == sorted(int(m.sum()) for m in expected)


def test_mask_scores_equal_iou_scores(chain, tiny_sam, photos):
    """The scores the chain keeps per mask (``Detections.mask_score``) are SAM's predicted IoU for the same boxes,
    decoded over a whole batch at once; ``confidence`` stays the detector's."""
    import torch
    from transformers import SamModel, SamProcessor

    from avala_infer.predictors.segmentation.box_prompted import decode_boxes, sam_box_prompts

    model = SamModel.from_pretrained(str(tiny_sam)).eval()
    processor = SamProcessor.from_pretrained(str(tiny_sam))
    predictor = chain.predictor
    prepared = [predictor.prepare(cv2.imread(str(path))) for path in photos[:3]]
    predictions = list(chain.predict(photos[:3]))
    boxes = [p.detections.xyxy for p in predictions]
    with torch.inference_mode():
        sam = [predictor.sam_input_of(p) for p in prepared]
        embeddings = predictor.model.get_image_embeddings(torch.stack([s.pixel_values for s in sam]))
        prompts = np.concatenate(
            [sam_box_prompts(b, p.orig_shape, s.resized_shape) for b, p, s in zip(boxes, prepared, sam)]
        )
        index = np.repeat(np.arange(len(boxes)), [len(b) for b in boxes])
        _, scores = decode_boxes(predictor.model, embeddings, index, prompts, multimask=False)
    expected = np.concatenate([_reference(model, processor, path, b, False)[1] for path, b in zip(photos, boxes)])
    assert len(expected) == sum(map(len, boxes)) > 0
    np.testing.assert_allclose(scores.numpy(), expected, rtol=0, atol=1e-6)
    kept = np.concatenate([p.detections.mask_score for p in predictions])
    np.testing.assert_allclose(kept, expected, rtol=0, atol=1e-6)
    assert not np.allclose(kept, np.concatenate([p.detections.confidence for p in predictions]))


def test_the_run_filters_choose_the_prompts(chain, photos):
    """The boxes that prompt SAM are the detector's after the run's filters, in the detector's vocabulary (the
    engine maps them once); the output is exactly the filtered detector's boxes, mapped."""
    import torch

    from avala_infer import Engine

    options = dict(
        confidence_threshold=0.3,
        labels=["human", "toy"],
        label_map={"person": "human", "teddy bear": "toy"},
        label_thresholds={"toy": 0.5},
    )
    with Engine("yolo11n", device="cpu", batch_size=4) as detector:
        expected = list(detector.predict(photos, **options))
    got = list(chain.predict(photos, **options))
    assert sum(len(p.detections) for p in got) >= 4  # 4 people and teddy bears pass these filters
    for want, p in zip(expected, got):
        d = p.detections
        assert set(d.class_name) <= {"human", "toy"} and d.mask is not None
        np.testing.assert_array_equal(d.xyxy, want.detections.xyxy)
        np.testing.assert_array_equal(d.confidence, want.detections.confidence)
    # what postprocess hands the engine: only the kept boxes were segmented, still named as the detector names them
    predictor = chain.predictor
    prepared = [predictor.prepare(cv2.imread(str(path))) for path in photos[:4]]
    prepared = [p for p in prepared if predictor.batch_key(p) == predictor.batch_key(prepared[0])]
    opts = chain.predict_options(**options)
    with torch.inference_mode():
        raw = predictor.forward(predictor.collate(prepared))
        results = predictor.postprocess(raw, prepared, **opts.postprocess_options())
        unfiltered = predictor.postprocess(raw, prepared, score_floor=0.3)
    assert sum(len(r) for r in results) < sum(len(r) for r in unfiltered)
    for r, whole in zip(results, unfiltered):
        floor = np.where(r.class_name == "teddy bear", 0.5, 0.3)
        assert set(r.class_name) <= {"person", "teddy bear"} and (r.confidence >= floor).all()
        same = np.isin(whole.confidence, r.confidence) & np.isin(whole.class_name, ["person", "teddy bear"])
        assert same.sum() == len(r)
        assert np.array_equal(r.mask, whole.mask[same])  # a box's mask never depends on the other boxes


def test_only_images_that_keep_a_box_are_encoded(chain, photos, monkeypatch):
    """SAM's image encoder, the costly model, sees the images that kept a box after the run's filters, and no
    other: with a narrow vocabulary most images of a dataset have none."""
    predictor = chain.predictor
    encoded: list[int] = []
    encode = predictor.model.get_image_embeddings

    def counted(pixels):
        encoded.append(len(pixels))
        return encode(pixels)

    monkeypatch.setattr(predictor.model, "get_image_embeddings", counted)
    people = list(chain.predict(photos, labels=["person"]))
    with_people = sum(len(p.detections) > 0 for p in people)
    assert 0 < with_people < len(photos) and sum(encoded) == with_people
    assert all(p.error is None and p.detections.mask is not None for p in people)
    encoded.clear()
    nothing = list(chain.predict(photos, labels=["toaster"]))  # in COCO's names, in none of these photos
    assert encoded == [] and all(len(p.detections) == 0 and p.detections.mask is not None for p in nothing)


def test_on_a_cpu_sams_processor_runs_on_the_images_that_keep_a_box(chain, photos, monkeypatch):
    """On a CPU SAM's input (10 ms and 12 MB an image at 1024) is made in postprocess, for the images that keep a
    box only; made for every image in prepare (as on a GPU, where the loader threads make it) the masks are the
    same, bit for bit."""
    predictor = chain.predictor
    size = predictor.processor.image_processor.pad_size["height"]
    assert predictor.sam_input_shape == (3, size, size)  # padded square: the same for every picture
    made: list[tuple[int, int]] = []
    make = predictor.sam_input

    def counted(image):
        made.append(image.shape[:2])
        return make(image)

    monkeypatch.setattr(predictor, "sam_input", counted)
    lazy = list(chain.predict(photos, labels=["person"]))
    with_people = [p for p in lazy if len(p.detections)]
    assert 0 < len(with_people) < len(photos)
    assert sorted(made) == sorted(p.detections.mask.shape[1:] for p in with_people)
    made.clear()
    monkeypatch.setattr(predictor, "sam_input_shape", None)  # SAM's input made in prepare, as on a GPU
    eager = list(chain.predict(photos, labels=["person"]))
    assert len(made) == len(photos)
    for one, other in zip(lazy, eager):
        assert np.array_equal(one.detections.xyxy, other.detections.xyxy)
        assert np.array_equal(one.detections.mask, other.detections.mask)
        assert np.array_equal(one.detections.mask_score, other.detections.mask_score)


def test_on_a_cpu_sams_encoder_takes_one_image_at_a_time_with_the_masks_a_batch_gives(chain, photos, monkeypatch):
    """On a CPU the image encoder runs image by image (its activations, hundreds of MB an image at 1024, are not
    multiplied by the batch; a CPU gains nothing from batching it); encoded as one batch the masks agree."""
    from avala_infer.predictors.segmentation import box_prompted

    model = chain.predictor.model
    encode = model.get_image_embeddings
    passes: list[int] = []

    def counted(pixels, *args, **kwargs):
        passes.append(len(pixels))
        return encode(pixels, *args, **kwargs)

    monkeypatch.setattr(model, "get_image_embeddings", counted)
    single = list(chain.predict(photos))
    assert set(passes) == {1} and len(passes) == sum(len(p.detections) > 0 for p in single) == len(photos)
    passes.clear()
    monkeypatch.setattr(box_prompted, "CPU_ENCODER_BATCH", 64)
    batched = list(chain.predict(photos))
    assert max(passes) > 1  # the chain's batches of 4, in one pass each
    for one, other in zip(single, batched):
        assert np.array_equal(one.detections.xyxy, other.detections.xyxy)
        assert np.allclose(one.detections.mask_score, other.detections.mask_score, atol=1e-5)
        differ = np.count_nonzero(one.detections.mask != other.detections.mask)
        assert differ <= 1e-4 * one.detections.mask.size, differ


def test_label_cli_writes_coco_masks(chain, tiny_sam, photos, tmp_path):
    """``avala-infer label DIR --model CHAIN.yaml --format coco``: RLE masks, the detector's categories."""
    spec = chain_spec_file(tmp_path / "chain.yaml", tiny_sam)
    folder = tmp_path / "images"
    folder.mkdir()
    for path in photos[:3]:
        (folder / path.name).symlink_to(path)
    command = ["label", folder, "--model", spec, "--device", "cpu", "--format", "coco", "--out", tmp_path / "coco"]
    done = subprocess.run(
        [sys.executable, "-m", "avala_infer.cli", *map(str, command)],
        capture_output=True, text=True, env={**os.environ}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    coco = json.loads((tmp_path / "coco" / "annotations.coco.json").read_text())
    in_process = [p.detections for p in chain.predict(photos[:3])]  # the same weights, threshold 0.25
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == sum(map(len, in_process)) > 0
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert {"person", "tv", "bear"} <= {names[a["category_id"]] for a in coco["annotations"]}
    assert all(a["segmentation"]["counts"] and a["area"] > 0 for a in coco["annotations"])


def test_an_auto_label_job_with_a_chain_spec_stores_what_label_writes(tiny_sam, photos, tmp_path):
    """A project whose instance_segmentation model is a chain spec: a real JobRunner on a real store runs an
    auto-label job over 4 photos, and each item's stored result is, record for record, the JSONL line ``label()``
    writes for the same spec and threshold: boxes, classes, scores, SAM's mask score and the RLE of every mask."""
    from avala_infer import label
    from avala_infer.jobs.runner import JobRunner
    from avala_infer.projects.imports import import_sources
    from avala_infer.store import Store, worker_id
    from tests.jobs_helpers import Reader

    spec = chain_spec_file(tmp_path / "chain.yaml", tiny_sam)
    images = photos[:4]
    with Store(tmp_path / "home") as store:
        project = store.projects.create("masks", models={"instance_segmentation": str(spec)})["uid"]
        assert import_sources(store, project, [str(p) for p in images]).created == len(images)
        job = store.jobs.create(project, model_type="instance_segmentation", confidence_threshold=0.3)
        with JobRunner(store, worker_id(), device="cpu") as runner:
            finished = runner.run(store.jobs.claim(runner.worker, runner.lease_s, only=job["uid"]))
    assert finished["status"] == "completed", finished.get("error_message")
    reader = Reader(tmp_path / "home")
    try:
        stored = {key: row["annotations"]["annotations"] for key, row in reader.results(project).items()}
    finally:
        reader.close()
    label(images, str(spec), out=tmp_path / "same", formats=["jsonl"], confidence_threshold=0.3, device="cpu")
    lines = [json.loads(line) for line in (tmp_path / "same" / "annotations.jsonl").read_text().splitlines()]
    written = {line["key"]: line["annotations"] for line in lines}
    assert set(stored) == set(written) and len(written) == len(images)
    assert sum(map(len, written.values())) >= 10 and all("segmentation" in a for a in written["000000000139.jpg"])
    assert stored == written


def test_dry_run_previews_the_chain(chain, photos, tmp_path):
    from avala_infer.labeling import label

    run = label(photos[:3], chain, out=tmp_path, formats=["coco"], dry_run=True, preview_count=3)
    summary = json.loads((tmp_path / "summary.json").read_text())
    kept = sum(len(p.detections) for p in chain.predict(photos[:3]))  # at the default threshold, 0.25
    assert run.dry_run and summary["settings"]["dry_run"] is True and summary["annotations"] == kept > 0
    assert summary["per_label"]["person"] >= 1
    assert not list(tmp_path.glob("annotations*"))
    previews = [p for p in tmp_path.rglob("*") if p.suffix in (".jpg", ".png", ".webp")]
    assert len(previews) >= 3


def test_spec_errors(tiny_sam, tmp_path):
    from avala_infer import Engine

    with pytest.raises(ModelSpecError, match="params.detector"):
        Engine(chain_spec(tiny_sam, detector=""), device="cpu")
    with pytest.raises(ModelSpecError, match="unknown params"):
        Engine(chain_spec(tiny_sam, prompts={"a": ["b"]}), device="cpu")
    with pytest.raises(ConfigError, match="object_detection model"):
        Engine(chain_spec(tiny_sam, detector="yolo11n-seg"), device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ModelLoadError, match="SamModel"):
        Engine(chain_spec(tmp_path), device="cpu")


def test_a_prompted_detector_makes_a_prompted_chain(tiny_sam, tmp_path):
    """An open-vocabulary detector's chain takes a run's vocabulary (``Engine(vocabulary=)``) and hands it to the
    detector: the instances are named by it, and each has its mask."""
    from avala_infer import Engine
    from tests.coverage_open_vocab import owl_folder, owl_spec  # the tiny OWLv2 of the open-vocabulary tests

    detector = owl_spec(tmp_path / "owl.yaml", owl_folder(tmp_path, "owlv2"), ["person", "car"])
    with Engine(chain_spec(tiny_sam, detector=str(detector)), device="cpu", vocabulary=["person", "bus"]) as engine:
        assert engine.predictor.prompted and engine.labels == ("person", "bus")
        (p,) = engine.predict([need(VAL_IMAGES / "000000000139.jpg")], confidence_threshold=0.01, max_det=5)
    check_instances(p)
    assert len(p.detections) == 5 and set(p.detections.class_name) <= {"person", "bus"}
    with pytest.raises(ConfigError, match="fixed vocabulary"):
        Engine(chain_spec(tiny_sam), device="cpu", vocabulary=["person"])
