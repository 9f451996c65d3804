"""Issue 13, item 5: ``decode="gpu"`` (``--decode gpu``). The loaders hand plain JPEGs on undecoded; the collate
stage decodes them on the model's device with ``decode_jpegs_on``, letterboxes them with the tensor letterbox and
stacks them into the batch; anything else decodes on the CPU as before, and a file no decoder takes fails alone.

No GPU here: the engine's internal switch (``decode_on_device``, with ``stage_threads`` for the GPU's staged
collate/forward/postprocess) drives the very same path with torch CPU tensors. The ``needs_gpu`` test runs it on
CUDA where torch sees a GPU."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from avala_infer import Engine
from avala_infer.engine import pipeline
from avala_infer.engine.device_decode import PendingImage, device_decode_for, pending
from avala_infer.engine.loaders import EncodedJpeg, read_image
from avala_infer.engine.sources import Item
from avala_infer.errors import ConfigError
from avala_infer.predictors.detection.onnx import OnnxYoloDetector
from avala_infer.predictors.detection.ultralytics import UltralyticsDetector, UltralyticsSegmenter
from tests.conftest import ASSETS, need
from tests.reference import coco_map50_95, match_pairs
from tests.skip_guard import NO_GPU_REASON
from tests.test_coco_map import _ground_truth

pytestmark = [pytest.mark.assets]
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU_REASON)


class Calls:
    """Counts the batches ``decode_pending`` decodes (the real one runs)."""

    def __init__(self, real):
        self.real, self.items = real, []

    def __call__(self, prepared, device):
        self.items.append(len(prepared))
        return self.real(prepared, device)


@pytest.fixture(scope="module")
def engine(weights_pt):
    """yolo11n ``.pt`` on the CPU, with the GPU's stage threads; ``decode_on_device`` is switched per run."""
    engine = Engine(weights_pt, device="cpu", batch_size=16, streams=1)
    engine.stage_threads = True
    yield engine
    engine.close()


@pytest.fixture()
def decoded_on_device(engine, monkeypatch):
    calls = Calls(pipeline.decode_pending)
    monkeypatch.setattr(pipeline, "decode_pending", calls)
    engine.decode_on_device = True
    yield calls
    engine.decode_on_device = False


def predict_both_ways(engine, sources, monkeypatch, **options):
    engine.decode_on_device = False
    on_cpu = list(engine.predict(sources, **options))
    calls = Calls(pipeline.decode_pending)
    monkeypatch.setattr(pipeline, "decode_pending", calls)
    engine.decode_on_device = True
    try:
        on_device = list(engine.predict(sources, **options))
    finally:
        engine.decode_on_device = False
    return on_cpu, on_device, calls


def test_modes_are_checked_before_the_model_loads(weights_pt):
    with pytest.raises(ConfigError, match=r"CUDA device.*runs on cpu.*--decode cpu"):
        Engine(weights_pt, device="cpu", decode="gpu")
    with pytest.raises(ConfigError, match="decode must be one of cpu, gpu, auto"):
        Engine(weights_pt, device="cpu", decode="nvjpeg")
    assert not device_decode_for("auto", ("cpu",), UltralyticsDetector, "yolo11n")
    assert not device_decode_for("cpu", ("cuda:0",), UltralyticsDetector, "yolo11n")
    assert device_decode_for("auto", ("cuda:0", "cuda:1"), UltralyticsSegmenter, "yolo11n-seg")
    assert device_decode_for("GPU", ("cuda:0",), UltralyticsDetector, "yolo11n")
    assert not device_decode_for("auto", ("cuda:0",), OnnxYoloDetector, "yolo11n-onnx")  # its collate is numpy's
    with pytest.raises(ConfigError, match=r"torch backend.*yolo11n-onnx.*--decode cpu"):
        device_decode_for("gpu", ("cuda:0",), OnnxYoloDetector, "yolo11n-onnx")


def map50_95(run: list) -> float:
    """pycocotools mAP50-95 of a run's predictions against coco128 val2017's labels."""
    names_by_id = yaml.safe_load(need(ASSETS / "data/coco128/object_detection/config.yaml").read_text())["names"]
    names = [names_by_id[i] for i in sorted(names_by_id)]
    assert [p.error for p in run] == [None] * len(run)
    coco_images, results = [], []
    for image_id, p in enumerate(run, 1):
        coco_images.append({"id": image_id, "file_name": Path(p.source).name, "width": p.width, "height": p.height})
        d = p.detections
        for (x1, y1, x2, y2), score, cls in zip(d.xyxy.tolist(), d.confidence.tolist(), d.class_id.tolist()):
            box = [x1, y1, x2 - x1, y2 - y1]
            results.append({"image_id": image_id, "category_id": cls + 1, "score": score, "bbox": box})
    return coco_map50_95(_ground_truth(coco_images, names), results, "bbox")


@pytest.mark.slow
def test_detections_and_map_match_the_cpu_decoded_run_on_coco128(engine, val_subset, monkeypatch):
    on_cpu, on_device, calls = predict_both_ways(engine, val_subset, monkeypatch, confidence_threshold=0.001)
    assert sum(calls.items) == len(on_device) == len(on_cpu) >= 64  # every JPEG went the device's way
    unchanged = 0
    for cpu, device in zip(on_cpu, on_device):
        assert (cpu.source, cpu.width, cpu.height) == (device.source, device.width, device.height)
        assert cpu.timings["decode"] > 0 and device.timings["decode"] == 0  # the loaders did not decode it
        if max(cpu.width, cpu.height) == engine.predictor.spec.input_size:  # no resize: the very same pixels
            assert np.array_equal(cpu.detections.xyxy, device.detections.xyxy), cpu.source
            assert np.array_equal(cpu.detections.confidence, device.detections.confidence), cpu.source
            unchanged += 1
    scores = map50_95(on_cpu), map50_95(on_device)
    print(f"mAP50-95 CPU-decoded {scores[0]:.4f}, device-decoded {scores[1]:.4f}; {unchanged} not resized")
    assert unchanged >= 40
    assert 0.35 < scores[0] < 0.55
    assert abs(scores[0] - scores[1]) <= 0.005, scores


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> dict[str, Path]:
    """Good JPEGs, an EXIF-turned one, a PNG, a CMYK JPEG, and two damaged JPEGs (cut: an end marker in the middle,
    libjpeg warns and the bottom is missing; half: no end)."""
    folder = tmp_path_factory.mktemp("mixed")
    from PIL import Image

    bus = need(ASSETS / "images" / "ultralytics" / "bus.jpg").read_bytes()
    picture = cv2.imdecode(np.frombuffer(bus, np.uint8), cv2.IMREAD_COLOR)
    files = {f"good{i}": path for i, path in enumerate(sorted(need(ASSETS / "images" / "ultralytics").glob("*.jpg")))}
    files["cut"], files["half"] = folder / "cut.jpg", folder / "half.jpg"
    files["cut"].write_bytes(bus[: len(bus) // 2] + b"\xff\xd9")
    files["half"].write_bytes(bus[: len(bus) // 2])
    files["png"] = folder / "bus.png"
    cv2.imwrite(str(files["png"]), picture)
    rgb = Image.fromarray(cv2.cvtColor(picture, cv2.COLOR_BGR2RGB))
    files["cmyk"] = folder / "cmyk.jpg"
    rgb.convert("CMYK").save(files["cmyk"], "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side (1080x810): the decoders turn it upright (810x1080)
    files["turned"] = folder / "turned.jpg"
    rgb.transpose(Image.Transpose.ROTATE_90).save(files["turned"], "JPEG", exif=exif.tobytes())
    return files


def test_a_damaged_jpeg_fails_alone_naming_the_file_and_other_formats_go_the_cpu_way(weights_pt, mixed, monkeypatch):
    """One square batch holds them all: the good JPEGs and the turned one are decoded on the device, the PNG and
    the CMYK JPEG and the one with no end marker on the loader threads, the damaged ones fail with the CPU path's
    own reasons."""
    sources = list(mixed.values())
    with Engine(weights_pt, device="cpu", batch_size=16, streams=1, letterbox="square") as square:
        square.stage_threads = True
        on_cpu, on_device, calls = predict_both_ways(square, sources, monkeypatch)
    assert calls.items == [len(sources) - 1]  # half.jpg has no end marker: the loaders decode it (goes_to_the_device)
    by_name = dict(zip(mixed, zip(on_cpu, on_device)))
    for name in ("cut", "half"):
        cpu, device = by_name[name]
        assert device.error == cpu.error and str(mixed[name]) in device.error, name
    assert "damaged image" in by_name["cut"][1].error and "corrupt or truncated" in by_name["half"][1].error
    for name, (cpu, device) in by_name.items():
        if name in ("cut", "half"):
            continue
        assert device.error is None and (device.width, device.height) == (cpu.width, cpu.height), name
        went_cpu = name in ("png", "cmyk")
        assert (device.timings["decode"] > 0) is went_cpu, name
        if went_cpu:  # the same decode and letterbox as the CPU run: the same detections
            assert np.array_equal(device.detections.xyxy, cpu.detections.xyxy), name
        else:  # resized: the tensor letterbox is within a grey level of cv2's, so the boxes nearly agree
            sure = cpu.detections[cpu.detections.confidence > 0.5]
            found = match_pairs(
                sure.xyxy, sure.confidence, sure.class_id, *device_boxes(device), min_iou=0.95, score_tol=0.05
            )
            assert len(sure) > 0 and len(found) == len(sure), name
    turned = by_name["turned"][1]
    assert (turned.width, turned.height) == (810, 1080)  # upright


def device_boxes(prediction):
    d = prediction.detections
    return d.xyxy, d.confidence, d.class_id


def test_an_image_sink_gets_pixels_so_the_loaders_decode(engine, mixed, decoded_on_device):
    seen: dict[int, tuple[int, ...]] = {}
    items = [Item(i, str(mixed[f"good{i}"]), mixed[f"good{i}"].name) for i in range(2)]
    options = engine.predict_options()
    predictions = list(engine.stream(items, options, on_image=lambda seq, image: seen.update({seq: image.shape})))
    assert [p.error for p in predictions] == [None, None] and sorted(seen) == [0, 1]
    assert decoded_on_device.items == []  # nothing was left for the device


def test_a_pending_image_stands_in_for_the_letterboxed_array(engine, mixed):
    """What the retry paths (out of memory, a batch in pieces) get through the predictor's own collate:
    np.asarray decodes on the CPU exactly as the loaders would, or copies the device's picture back."""
    predictor = engine.predictor
    jpeg = read_image(Item(0, str(mixed["turned"]), "turned.jpg"), {}, keep_jpeg=True)
    assert isinstance(jpeg, EncodedJpeg) and jpeg.shape == (1080, 810, 3) and jpeg.orientation == 6
    assert cv2.imread(str(mixed["turned"]), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION).shape == (810, 1080, 3)
    prepared = pending(jpeg, predictor)
    truth = predictor.prepare(cv2.imread(str(mixed["turned"])))
    assert isinstance(prepared.image, PendingImage) and prepared.image.shape == truth.image.shape
    assert prepared.orig_shape == truth.orig_shape and predictor.batch_key(prepared) == predictor.batch_key(truth)
    assert np.array_equal(np.asarray(prepared.image), truth.image)
    assert np.array_equal(np.stack([prepared.image, truth.image])[0], truth.image)  # as stack_to_device does
    prepared.image.on_device = torch.from_numpy(truth.image).permute(2, 0, 1).flip(0)  # RGB CHW
    assert np.array_equal(np.asarray(prepared.image), truth.image)
    assert not isinstance(read_image(Item(0, str(mixed["png"]), "png"), {}, keep_jpeg=True), EncodedJpeg)
    assert not isinstance(read_image(Item(0, str(mixed["cmyk"]), "cmyk"), {}, keep_jpeg=True), EncodedJpeg)


@needs_gpu
def test_on_cuda_the_detections_and_map_match_the_cpu_decoded_run(weights_pt, val_subset, mixed):
    """nvJPEG and the tensor letterbox on a GPU against the loaders' decode, the same engine settings otherwise."""
    sources = [val_subset, *mixed.values()]
    with Engine(weights_pt, device="cuda", batch_size=16) as cpu_decoded:
        on_cpu = list(cpu_decoded.predict(sources, confidence_threshold=0.001))
    with Engine(weights_pt, device="cuda", batch_size=16, decode="gpu") as gpu_decoded:
        assert gpu_decoded.decode_on_device
        on_gpu = list(gpu_decoded.predict(sources, confidence_threshold=0.001))
    cut = str(mixed["cut"])
    for cpu, gpu in zip(on_cpu, on_gpu):
        if cpu.source == cut:  # nvJPEG fills in a file cut short that ends with an end marker: see decode_jpegs_on
            assert "damaged image" in cpu.error and gpu.error is None, (cpu.error, gpu.error)
            continue
        assert cpu.error == gpu.error and (cpu.width, cpu.height) == (gpu.width, gpu.height), cpu.source
    coco = len(list(val_subset.iterdir()))
    scores = map50_95(on_cpu[:coco]), map50_95(on_gpu[:coco])
    print(f"CUDA: mAP50-95 CPU-decoded {scores[0]:.4f}, GPU-decoded {scores[1]:.4f}")
    assert abs(scores[0] - scores[1]) <= 0.005, scores


@needs_gpu
def test_nvjpeg_pictures_stay_close_to_cv2s(val_images):
    """The pixel difference nvJPEG makes (its IDCT and chroma upsampling are its own), printed for the README."""
    from avala_infer.engine.decode import decode_jpegs_on

    files = sorted(val_images.glob("*.jpg"))
    datas = [np.fromfile(path, np.uint8) for path in files]
    differences = []
    for path, data, picture in zip(files, datas, decode_jpegs_on("cuda", datas)):
        assert isinstance(picture, torch.Tensor), (path, picture)
        truth = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        ours = picture.permute(1, 2, 0).cpu().numpy()
        assert ours.shape == truth.shape, path
        differences.append(np.abs(ours.astype(np.int16) - truth).ravel())
    every = np.concatenate(differences)
    mean, p99, worst, share = every.mean(), np.percentile(every, 99), every.max(), np.mean(every > 0)
    print(f"nvJPEG vs cv2 on {len(files)} coco128 val pictures: |difference| mean {mean:.3f}, 99th percentile "
          f"{p99:.0f}, max {worst}, pixels differing {share:.2%}")  # fmt: skip
    assert every.mean() <= 2.0


def test_the_cli_flag_reaches_the_engine(weights_pt, mixed, tmp_path):
    from click.testing import CliRunner

    from avala_infer.cli import cli

    images = [str(mixed["good0"]), str(mixed["png"])]
    args = ["label", *images, "--model", str(weights_pt), "--device", "cpu", "--format", "jsonl"]
    refused = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "gpu"), "--decode", "gpu"])
    assert refused.exit_code != 0 and "runs on cpu: use --decode cpu" in refused.output
    labeled = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "auto"), "--decode", "auto"])
    assert labeled.exit_code == 0, labeled.output
    assert "2/2 items labeled" in labeled.output
