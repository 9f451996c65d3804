"""Paths built from item keys stay inside the output folder: a hostile key (``../``, absolute, a drive, NUL)
cannot write outside it or crash a writer, nested keys keep their sub-folders, and two keys that come out as
one path do not overwrite each other (the later one gets ``_1``, as imports name duplicate keys).

Keys from files are paths relative to the source folder; a project can hold any key, so the hostile ones go
through the real engine as :class:`Item` s and then through every writer that makes paths from keys.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import pytest

from avala_infer import Engine, label
from avala_infer.engine.sources import Item
from avala_infer.exporters import make_writer
from avala_infer.exporters.base import PathAllocator, safe_relative_path
from avala_infer.exporters.preview import PreviewWriter
from avala_infer.exporters.summary import SummaryCollector
from avala_infer.types import ModelType
from tests.conftest import ASSETS, need


def _everything_under(root: Path) -> set[str]:
    """Every file, folder and link under ``root`` (links not followed), as paths relative to it."""
    found = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(folder, name), root))
    return found


def _hostile_keys(canary: Path) -> dict[str, str]:
    """key -> the relative path (without extension) its files must get."""
    absolute = canary / "abs.jpg"
    return {
        "a.jpg": "a",
        "a.png": "a_1",  # same stem as a.jpg: its own files
        "sub/a.jpg": "sub/a",  # inside: the sub-folder is kept
        "sub/./a.jpg": "sub/a_1",  # the same path once normalised
        "../canary/evil.jpg": "canary/evil",
        "../../up.jpg": "up",
        str(absolute): str(absolute.with_suffix("")).lstrip("/"),
        "a/../../b.jpg": "b",
        "C:\\x.jpg": "x",
        "..\\..\\win.jpg": "win",
        "nul\x00byte.jpg": "nul_byte",
        "": "unnamed",
    }


def test_safe_relative_path_and_allocator():
    assert str(safe_relative_path("../../x.jpg")) == "x.jpg"
    assert str(safe_relative_path("/etc/x.jpg")) == "etc/x.jpg"
    assert str(safe_relative_path("a/../../b.jpg")) == "b.jpg"
    assert str(safe_relative_path("C:\\x.jpg")) == "x.jpg"
    assert str(safe_relative_path("a\x00b.jpg")) == "a_b.jpg"
    assert str(safe_relative_path("sub/a.jpg")) == "sub/a.jpg"
    assert str(safe_relative_path("..")) == "unnamed"
    assert len(safe_relative_path("x" * 400 + ".jpg").name.encode()) <= 200
    assert safe_relative_path("x" * 400 + ".jpg").suffix == ".jpg"
    paths = PathAllocator(Path("/out"))
    assert paths.allocate("a.jpg", ".txt") == Path("/out/a.txt")
    assert paths.allocate("a.png", ".txt") == Path("/out/a_1.txt")
    assert paths.allocate("a.txt", ".txt") == Path("/out/a_2.txt")
    # a folder cannot take a name a file has, nor a file a folder's name
    assert paths.allocate("q", None) == Path("/out/q")
    assert paths.allocate("q/z.jpg", ".txt") == Path("/out/q_1/z.txt")
    assert paths.allocate("d/e.jpg", ".txt") == Path("/out/d/e.txt")
    assert paths.allocate("d", None) == Path("/out/d_1")
    # a companion extension (YOLO's image link) is kept free as well
    assert paths.allocate("m.txt", ".txt", companion=".jpg") == Path("/out/m.txt")
    assert paths.allocate("m.jpg/n.jpg", ".txt") == Path("/out/m_1.jpg/n.txt")


def test_hostile_keys_stay_inside_the_output_folder(engine_onnx, tmp_path):
    bus = need(ASSETS / "images" / "ultralytics" / "bus.jpg")
    zidane = need(ASSETS / "images" / "ultralytics" / "zidane.jpg")
    run = tmp_path / "run"
    out, canary = run / "out", run / "canary"
    canary.mkdir(parents=True)
    (canary / "keep.txt").write_text("canary")
    keys = _hostile_keys(canary)
    items = [Item(i, str(bus if i % 2 == 0 else zidane), key) for i, key in enumerate(keys)]
    labels = engine_onnx.labels
    writers = [make_writer(fmt, out, labels) for fmt in ("jsonl", "coco", "yolo", "labelstudio")]
    summary = SummaryCollector(out, labels, {"model": "yolo11n-onnx"})
    preview = PreviewWriter(out, summary, len(items))
    sinks = [*writers, summary, preview]
    predictions = list(engine_onnx.stream(items, engine_onnx.predict_options(), on_image=preview.take_image))
    assert [p.key for p in predictions] == list(keys) and all(p.ok for p in predictions)

    for prediction in predictions:
        for sink in sinks:
            sink.write(prediction)
    for sink in sinks:
        sink.close()

    # nothing outside out/: the canary folder and everything around out are as they were
    assert _everything_under(tmp_path) - {"run/out/" + p for p in _everything_under(out)} == {
        "run",
        "run/out",
        "run/canary",
        "run/canary/keep.txt",
    }
    for path in out.rglob("*"):  # lexically inside (links are checked as links, not where they point)
        assert os.path.abspath(path).startswith(str(out) + os.sep)
    # every key has its own label file at the expected place, with its own prediction's boxes
    yolo = out / "yolo"
    written = sorted(p.relative_to(yolo / "labels").as_posix() for p in (yolo / "labels").rglob("*.txt"))
    assert written == sorted(stem + ".txt" for stem in keys.values())
    for prediction, stem in zip(predictions, keys.values()):
        lines = (yolo / "labels" / (stem + ".txt")).read_text().splitlines()
        assert len(lines) == len(prediction.detections) > 0
        link = yolo / "images" / (stem + ".jpg")
        assert link.is_symlink() and link.resolve() == Path(prediction.source).resolve()
    assert len(list((out / "preview" / "images").iterdir())) == len(items)
    assert (out / "preview" / "index.html").is_file()


def test_hostile_keys_for_mask_pngs(tmp_path):
    page = need(ASSETS / "images" / "skimage" / "page.png")
    need(ASSETS / "models" / "ppocrv4_det.onnx")
    run = tmp_path / "run"
    out, canary = run / "out", run / "canary"
    canary.mkdir(parents=True)
    keys = _hostile_keys(canary)
    keys["classes.txt"] = "classes"  # the writer's own classes.txt is not overwritten either
    with Engine("ppocrv4-det", device="cpu") as engine:
        items = [Item(i, str(page), key) for i, key in enumerate(keys)]
        predictions = list(engine.stream(items, engine.predict_options()))
        writer = make_writer("masks", out, engine.labels, model_type=ModelType.SEMANTIC_SEGMENTATION)
        for prediction in predictions:
            writer.write(prediction)
        writer.close()
    assert _everything_under(canary) == set()
    assert {p.split("/")[0] for p in _everything_under(run)} == {"out", "canary"}
    masks = out / "masks"
    written = sorted(p.relative_to(masks).as_posix() for p in masks.rglob("*.png"))
    assert written == sorted(stem + ".png" for stem in keys.values())
    assert (masks / "classes.txt").read_text().splitlines() == ["0 unlabeled", "1 text"]
    for prediction, stem in zip(predictions, keys.values()):
        assert (cv2.imread(str(masks / (stem + ".png")), cv2.IMREAD_UNCHANGED) == prediction.result.class_map + 1).all()


def test_label_from_files_keeps_sub_folders_and_every_item(engine_onnx, tmp_path):
    """Real files whose relative paths collide once extensions are swapped, or look like other paths."""
    bus = need(ASSETS / "images" / "ultralytics" / "bus.jpg")
    zidane = need(ASSETS / "images" / "ultralytics" / "zidane.jpg")
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    names = {
        "a.jpg": bus,
        "a.png": zidane,  # a.jpg and a.png would share yolo/labels/a.txt
        "sub/a.jpg": zidane,
        "C:\\x.jpg": bus,  # a legal file name on Linux
        "a\\..\\..\\b.jpg": zidane,
    }
    for name, image in names.items():
        if image.suffix == Path(name).suffix:
            shutil.copy(image, source / name)
        else:
            cv2.imwrite(str(source / name), cv2.imread(str(image)))
    out = tmp_path / "out"
    report = label([source], engine_onnx, out=out, formats=["yolo", "jsonl"])
    assert report.total == len(names) and report.failed == 0
    labels = out / "yolo" / "labels"
    written = sorted(p.relative_to(labels).as_posix() for p in labels.rglob("*.txt"))
    assert written == ["a.txt", "a_1.txt", "b.txt", "sub/a.txt", "x.txt"]
    assert {p.split("/")[0] for p in _everything_under(tmp_path)} == {"source", "out"}
    # each label file holds its own image's boxes (bus.jpg's and zidane.jpg's counts differ)
    records = {r["key"]: r for r in map(json.loads, (out / "annotations.jsonl").read_text().splitlines())}
    assert len((labels / "a.txt").read_text().splitlines()) == len(records["a.jpg"]["annotations"])
    assert len((labels / "a_1.txt").read_text().splitlines()) == len(records["a.png"]["annotations"])
    assert len(records["a.jpg"]["annotations"]) != len(records["a.png"]["annotations"])
    assert (out / "yolo" / "images" / "sub" / "a.jpg").resolve() == (source / "sub" / "a.jpg").resolve()


@pytest.mark.parametrize("key", ["../../../x.jpg", "{tmp}/abs/x.jpg", "x\x00.jpg"])
def test_yolo_writer_alone_never_writes_outside(tmp_path, key, engine_onnx):
    bus = need(ASSETS / "images" / "ultralytics" / "bus.jpg")
    key = key.format(tmp=tmp_path)  # an absolute key aims at a folder the test owns
    (prediction,) = engine_onnx.stream([Item(0, str(bus), key)], engine_onnx.predict_options())
    out = tmp_path / "deep" / "out"
    writer = make_writer("yolo", out, engine_onnx.labels)
    writer.write(prediction)
    writer.close()
    assert {p.split("/")[0] for p in _everything_under(tmp_path)} == {"deep"}
    assert {p.split("/")[0] for p in _everything_under(tmp_path / "deep")} == {"out"}
