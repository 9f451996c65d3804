"""Bad input fails its own item with a reason, or works; bad configuration fails before any work."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from avala_infer import Engine, label
from avala_infer.errors import (
    BackendUnavailableError,
    ModelSpecError,
    UnknownLabelError,
    UnknownModelError,
    UnsupportedInputError,
)


@pytest.fixture()
def messy_folder(tmp_path, sample_images):
    folder = tmp_path / "messy"
    folder.mkdir()
    good = sample_images[0].read_bytes()
    shutil.copy(sample_images[0], folder / "01_good.jpg")
    (folder / "02_zero.jpg").write_bytes(b"")
    (folder / "03_corrupt.jpg").write_bytes(b"\xff\xd8\xff" + np.random.default_rng(0).bytes(5000))
    (folder / "04_not_an_image.png").write_text("hello, I am text")
    (folder / "05_truncated.jpg").write_bytes(good[: len(good) // 2])
    color = cv2.imread(str(sample_images[0]))
    cv2.imwrite(str(folder / "06_gray.png"), cv2.cvtColor(color, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "07_rgba.png"), cv2.cvtColor(color, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(folder / "08_16bit.png"), color.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "09_huge.png"), np.zeros((17000, 17000), np.uint8))  # 289 MP, a few hundred KB
    cv2.imwrite(str(folder / "10_large.jpg"), cv2.resize(color, (4000, 5333)))
    return folder


def test_each_bad_item_fails_alone_and_the_run_goes_on(engine_pt, messy_folder, tmp_path):
    report = label([messy_folder, tmp_path / "missing.jpg"], engine_pt, out=tmp_path / "out", formats=["jsonl"])
    failures = {
        json.loads(line)["key"]: json.loads(line)["error"]
        for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()
    }
    assert set(failures) == {
        "02_zero.jpg",
        "03_corrupt.jpg",
        "04_not_an_image.png",
        "05_truncated.jpg",
        "09_huge.png",
        "missing.jpg",
    }
    assert "empty (0 bytes)" in failures["02_zero.jpg"]
    for key in ("03_corrupt.jpg", "04_not_an_image.png", "05_truncated.jpg"):
        assert "cannot decode" in failures[key] and "corrupt or truncated" in failures[key]
    assert "17000x17000" in failures["09_huge.png"] and "pixel limit" in failures["09_huge.png"]
    assert "no such file" in failures["missing.jpg"]
    assert (report.total, report.succeeded, report.failed) == (11, 5, 6)
    records = {json.loads(line)["key"]: json.loads(line) for line in (tmp_path / "out" / "annotations.jsonl").open()}
    assert set(records) == {"01_good.jpg", "06_gray.png", "07_rgba.png", "08_16bit.png", "10_large.jpg"}
    labels_of = {key: [a["label"] for a in r["annotations"]] for key, r in records.items()}
    for key in ("06_gray.png", "07_rgba.png", "08_16bit.png", "10_large.jpg"):
        assert "person" in labels_of[key], key  # converted images still show the bus scene's people
    assert (records["10_large.jpg"]["width"], records["10_large.jpg"]["height"]) == (4000, 5333)
    assert max(a["bbox"][2] for a in records["10_large.jpg"]["annotations"]) > 2000  # boxes in original pixels


def test_config_errors_come_before_any_work(engine_pt, tmp_path, sample_images):
    with pytest.raises(UnknownModelError, match="Known model names"):
        Engine("no-such-model", device="cpu")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodel_type: object_detection\nbackend: ultralytics\n")
    with pytest.raises(ModelSpecError, match="lacks required field"):
        Engine(bad, device="cpu")
    text = tmp_path / "notes.txt"
    text.write_text("a sentence")
    with pytest.raises(UnsupportedInputError, match="reads images, but .*notes.txt is a text file"):
        engine_pt.predict([text])
    with pytest.raises(UnknownLabelError):
        label(sample_images, engine_pt, out=tmp_path / "o", labels=["unicorn"])
    assert not (tmp_path / "o").exists()
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU|onnxruntime offers only"):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this host has a GPU")
        Engine("yolo11n", device="cuda")


def test_a_model_that_does_not_fit_the_spec_is_refused(tmp_path, weights_pt):
    spec = tmp_path / "seg.yaml"
    spec.write_text(
        f"name: seg\nmodel_type: object_detection\nbackend: ultralytics\nweights: {weights_pt}\nlabels: [a, b]\n"
    )
    with pytest.raises(Exception, match="lists 2 labels but .* has 80 classes"):
        Engine(spec, device="cpu")


def test_label_labels_a_file_reached_twice_once(engine_pt, sample_images, tmp_path):
    folder = sample_images[0].parent
    sources = [folder, f"{folder}/*.jpg", sample_images[0], folder]
    report = label(sources, engine_pt, out=tmp_path / "out", formats=["jsonl"])
    keys = [json.loads(line)["key"] for line in (tmp_path / "out" / "annotations.jsonl").open()]
    assert (report.total, report.succeeded) == (2, 2)
    assert sorted(keys) == sorted(p.name for p in sample_images)  # no bus_1.jpg: one item per file
    assert len(list(engine_pt.predict([sample_images[0], sample_images[0]]))) == 2  # Engine.predict: one per input
