"""A dry run goes through the same pipeline but writes previews and a summary only."""

from __future__ import annotations

import html
import json
import os
import re
import shutil

import cv2
import numpy as np

from avala_infer import label
from avala_infer.jobs import JobRunner
from avala_infer.projects.imports import import_sources
from avala_infer.store import Store, worker_id
from tests.conftest import VAL_IMAGES, VAL_SUBSET


def test_dry_run_writes_previews_and_summary_and_no_annotations(engine_pt, val_subset, tmp_path):
    real = label([val_subset], engine_pt, out=tmp_path / "real", formats=["jsonl"])
    dry = label(
        [val_subset], engine_pt, out=tmp_path / "dry", formats=["jsonl", "coco", "yolo"], dry_run=True, preview_count=5
    )
    out = tmp_path / "dry"
    assert sorted(p.name for p in out.iterdir()) == ["preview", "summary.json"]
    assert not list(out.rglob("*.jsonl")) and not list(out.rglob("*.coco.json")) and not list(out.rglob("*.txt"))
    previews = sorted((out / "preview" / "images").iterdir())
    assert len(previews) == 5
    image = cv2.imread(str(previews[0]))
    assert image is not None and image.shape[2] == 3
    page = (out / "preview" / "index.html").read_text()
    assert page.count("<img ") == 5 and "http:" not in page and "https:" not in page  # self-contained
    assert {link.split("/")[0] for link in re.findall(r"(?:src|href)=['\"]([^'\"]+)", page)} == {"images"}
    assert "default-src 'none'" in html.unescape(page)  # and its policy lets nothing else load
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == VAL_SUBSET and summary["failed"] == 0
    assert summary["settings"]["dry_run"] is True
    # the same pipeline: the counts equal a real run's
    assert summary["annotations"] == real.summary["annotations"] == sum(summary["per_label"].values())
    assert summary["per_label"] == real.summary["per_label"]
    assert sum(b["count"] for b in summary["score_histogram"]) == summary["annotations"]
    at = summary["annotations_at_threshold"]
    assert at["0.1"] > at["0.25"] == summary["annotations"] >= at["0.5"] >= at["0.9"]  # predicted at 0.05
    assert summary["sweep"]["floor"] == 0.05 and summary["sweep"]["thresholds"][4] == 0.25
    assert summary["sweep"]["annotations"][4] == summary["annotations"]
    assert summary["throughput_items_per_s"] > 0 and summary["mean_stage_ms"]["forward"] > 0
    assert dry.dry_run and dry.total == VAL_SUBSET


def test_dry_run_default_previews_first_fifty(engine_onnx, val_subset, tmp_path):
    report = label([val_subset], engine_onnx, out=tmp_path, dry_run=True)
    assert report.total == VAL_SUBSET > 50  # more images than the default previews
    assert len(list((tmp_path / "preview" / "images").iterdir())) == 50


def _sixteen() -> list:
    return sorted(VAL_IMAGES.glob("*.jpg"))[:16]


def test_dry_run_counts_are_honest_below_its_threshold(engine_onnx, val_images, tmp_path):
    """A dry run at 0.25 predicts at 0.05: its count at 0.1 is a real run's at 0.1 (it was the count at 0.25
    before: predictions below the run's threshold were never made). A real run lists no threshold below its own.
    """
    images = _sixteen()
    dry = label(images, engine_onnx, out=tmp_path / "dry", dry_run=True).summary
    real = {t: label(images, engine_onnx, out=tmp_path / f"r{t}", confidence_threshold=t).summary for t in (0.1, 0.25)}
    assert dry["per_label"] == real[0.25]["per_label"] and dry["annotations"] == real[0.25]["annotations"]
    at = dry["annotations_at_threshold"]
    assert at["0.1"] == real[0.1]["annotations"] > at["0.25"] == real[0.25]["annotations"]
    sweep = dry["sweep"]
    assert sweep["floor"] == 0.05 and sweep["thresholds"][:2] == [0.05, 0.1]
    assert sweep["annotations"][1] == real[0.1]["annotations"]
    assert {k: v[1] for k, v in sweep["per_label"].items() if v[1]} == real[0.1]["per_label"]
    assert sum(sweep["annotations"][:1]) > real[0.1]["annotations"]  # 0.05: more than any run above it
    # a real run at 0.25 cannot know what 0.1 would keep: no row for it, no sweep row below 0.25
    assert "0.1" not in real[0.25]["annotations_at_threshold"]
    assert real[0.25]["sweep"]["thresholds"][0] == 0.25
    print(f"16 images: at 0.1 the dry run counts {at['0.1']}, a real run at 0.1 wrote {real[0.1]['annotations']}")


def test_dry_run_job_counts_at_its_threshold_and_gallery_names_the_project(val_images, tmp_path):
    """A dry-run job predicts at the floor for its gallery, but its stored counts are those of its threshold;
    the gallery's settings to copy name the job's project."""
    images = _sixteen()
    with Store(tmp_path / "home") as store:
        project = store.projects.create("dry", models={"object_detection": "yolo11n-onnx"})["uid"]
        assert import_sources(store, project, [str(p) for p in images]).created == 16
        job = store.jobs.create(project, model_type="object_detection", confidence_threshold=0.5, dry_run=True)
        with JobRunner(store, worker_id(), device="cpu") as runner:
            claimed = store.jobs.claim(runner.worker, runner.lease_s, only=job["uid"])
            finished = runner.run(claimed)
            real = label(images, runner.engines["yolo11n-onnx"], out=tmp_path / "real", confidence_threshold=0.5)
    assert finished["status"] == "completed"
    summary = finished["summary"] if isinstance(finished["summary"], dict) else json.loads(finished["summary"])
    assert summary["per_label"] == real.summary["per_label"]
    folder = tmp_path / "home" / "jobs" / job["uid"]
    written = json.loads((folder / "summary.json").read_text())
    assert written["per_label"] == real.summary["per_label"] and written["sweep"]["floor"] == 0.05
    page = (folder / "preview" / "index.html").read_text()
    assert f"data-project='{project}'" in page and "data-model-type='object_detection'" in page


def _decoded_once_then_removed(monkeypatch) -> list[str]:
    """Count the loaders' image decodes, and remove each file as soon as the engine has read it: a preview that
    read or decoded a file a second time would find it gone (and count a decode more)."""
    from avala_infer.engine import loaders, pipeline

    decoded: list[str] = []
    decode, read_image = loaders.decode_quietly, pipeline.read_image

    def counted_decode(data):
        decoded.append(len(data))
        return decode(data)

    def read_then_remove(item, timings, *args, **kwargs):
        image = read_image(item, timings, *args, **kwargs)
        os.unlink(item.source)
        return image

    monkeypatch.setattr(loaders, "decode_quietly", counted_decode)
    monkeypatch.setattr(pipeline, "read_image", read_then_remove)
    return decoded


def _copies(folder, count: int = 6) -> list:
    folder.mkdir(parents=True)
    originals = _sixteen()[:count]
    for path in originals:
        shutil.copy(path, folder / path.name)
    return originals


def _assert_gallery_shows(folder, originals) -> None:
    """Every original is in the gallery, as the picture the pipeline decoded (the files are gone by now)."""
    page = (folder / "preview" / "index.html").read_text()
    assert page.count("<img ") == len(originals) and "preview not drawn" not in page
    for original in originals:
        (drawn,) = (folder / "preview" / "images").glob(f"*_{original.stem}.jpg")
        picture, truth = cv2.imread(str(drawn)), cv2.imread(str(original))
        assert picture.shape == truth.shape  # under 1024 pixels: drawn at full size
        assert np.abs(picture.astype(int) - truth.astype(int)).mean() < 6  # the same picture, JPEG noise aside


def test_the_gallery_draws_the_pictures_the_pipeline_decoded(engine_onnx, tmp_path, monkeypatch):
    """The preview reads no file: each image is read and decoded once, by the engine's loaders, which hand the
    picture on for the items the gallery shows (those beyond it are decoded once too, and not kept)."""
    originals = _copies(tmp_path / "in")
    decoded = _decoded_once_then_removed(monkeypatch)
    report = label(tmp_path / "in", engine_onnx, out=tmp_path / "dry", dry_run=True, preview_count=4)
    assert report.total == 6 and report.failed == 0 and len(decoded) == 6
    assert not list((tmp_path / "in").iterdir())  # each file was removed once the engine had read it
    _assert_gallery_shows(tmp_path / "dry", originals[:4])


def test_a_dry_run_jobs_gallery_draws_the_pictures_the_pipeline_decoded(tmp_path, monkeypatch):
    originals = _copies(tmp_path / "in")
    with Store(tmp_path / "home") as store:
        project = store.projects.create("dry", models={"object_detection": "yolo11n-onnx"})["uid"]
        assert import_sources(store, project, [str(tmp_path / "in")]).created == 6
        job = store.jobs.create(project, model_type="object_detection", dry_run=True)
        decoded = _decoded_once_then_removed(monkeypatch)
        with JobRunner(store, worker_id(), device="cpu") as runner:
            finished = runner.run(store.jobs.claim(runner.worker, runner.lease_s, only=job["uid"]))
    assert finished["status"] == "completed" and len(decoded) == 6
    _assert_gallery_shows(tmp_path / "home" / "jobs" / job["uid"], originals)
