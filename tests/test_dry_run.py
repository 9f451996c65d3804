"""A dry run goes through the same pipeline but writes previews and a summary only."""

from __future__ import annotations

import json

import cv2

from avala_infer import label


def test_dry_run_writes_previews_and_summary_and_no_annotations(engine_pt, val_images, tmp_path):
    real = label([val_images], engine_pt, out=tmp_path / "real", formats=["jsonl"])
    dry = label(
        [val_images], engine_pt, out=tmp_path / "dry", formats=["jsonl", "coco", "yolo"], dry_run=True, preview_count=5
    )
    out = tmp_path / "dry"
    assert sorted(p.name for p in out.iterdir()) == ["preview", "summary.json"]
    assert not list(out.rglob("*.jsonl")) and not list(out.rglob("*.coco.json")) and not list(out.rglob("*.txt"))
    previews = sorted((out / "preview" / "images").iterdir())
    assert len(previews) == 5
    image = cv2.imread(str(previews[0]))
    assert image is not None and image.shape[2] == 3
    page = (out / "preview" / "index.html").read_text()
    assert page.count("<img ") == 5 and "http" not in page  # self-contained: no outside resources
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == 128 and summary["failed"] == 0
    assert summary["settings"]["dry_run"] is True
    # the same pipeline: the counts equal a real run's
    assert summary["annotations"] == real.summary["annotations"] == sum(summary["per_label"].values())
    assert summary["per_label"] == real.summary["per_label"]
    assert sum(b["count"] for b in summary["score_histogram"]) == summary["annotations"]
    at = summary["annotations_at_threshold"]
    assert at["0.25"] == summary["annotations"] >= at["0.5"] >= at["0.9"]
    assert summary["throughput_items_per_s"] > 0 and summary["mean_stage_ms"]["forward"] > 0
    assert dry.dry_run and dry.total == 128


def test_dry_run_default_previews_first_fifty(engine_onnx, val_images, tmp_path):
    label([val_images], engine_onnx, out=tmp_path, dry_run=True)
    assert len(list((tmp_path / "preview" / "images").iterdir())) == 50
