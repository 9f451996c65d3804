"""A run that fails part-way (its inputs, or a writer) closes every writer, leaves no temporary file
(``*.part``, ``*.tmp``) and no half-written annotation file, and lets the error reach the caller."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from avala_infer import label

FORMATS = ["jsonl", "coco", "yolo", "labelstudio"]


def _leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for pattern in ("*.part", "*.tmp") for p in out.rglob(pattern))


def test_inputs_that_fail_mid_run_leave_no_temporary_files(engine_onnx, val_images, tmp_path):
    images = sorted(val_images.glob("*.jpg"))
    out = tmp_path / "out"
    earlier = label(images[:3], engine_onnx, out=out, formats=["jsonl"])  # a finished run into the same folder
    earlier_jsonl = (out / "annotations.jsonl").read_text()
    assert earlier.total == 3 and len(earlier_jsonl.splitlines()) == 3

    def sources():
        for i, image in enumerate(images):
            if i == 120:  # the loaders and the shape batcher hold ~64 items: many went through the writers
                raise RuntimeError("the image store went away")
            yield image

    with pytest.raises(RuntimeError, match="the image store went away"):
        label(sources(), engine_onnx, out=out, formats=FORMATS, exist_ok=True)  # into the earlier run, as it is
    assert _leftovers(out) == []
    # the writers did run: label files were written item by item, and the COCO scratch files were removed
    assert len(list((out / "yolo" / "labels").glob("*.txt"))) >= 8
    # no half file of this run: the whole-file formats are not there, the earlier JSONL is untouched
    assert not (out / "annotations.coco.json").exists() and not (out / "labelstudio.json").exists()
    assert (out / "annotations.jsonl").read_text() == earlier_jsonl
    assert json.loads((out / "summary.json").read_text())["items"] == 3  # the earlier run's summary


def test_a_writer_that_fails_mid_run_leaves_no_temporary_files(engine_onnx, val_images, tmp_path):
    out = tmp_path / "out"
    calls = []

    def break_the_yolo_folder(done, total, failed):
        if not calls:  # after the first item: the labels folder becomes a file, so the next write fails
            labels = out / "yolo" / "labels"
            shutil.rmtree(labels)
            labels.write_text("not a folder")
        calls.append(done)

    with pytest.raises(OSError):
        label(
            sorted(val_images.glob("*.jpg"))[:12], engine_onnx, out=out, formats=FORMATS, progress=break_the_yolo_folder
        )
    assert calls == [1]
    assert _leftovers(out) == []
    assert sorted(p.name for p in out.iterdir()) == ["yolo"]  # no JSONL, COCO, Label Studio or summary file
