"""The CLI as a user runs it: a real subprocess, exit codes, files, progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "avala_infer.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ},
        timeout=600,
    )


def test_label_writes_formats_and_exits_zero(sample_images, tmp_path):
    result = _run(
        "label",
        *sample_images,
        "--model",
        "yolo11n",
        "--labels",
        "person,bus",
        "--format",
        "coco",
        "--format",
        "jsonl",
        "--out",
        tmp_path,
        "--device",
        "cpu",
        "--confidence",
        "0.5",
    )
    assert result.returncode == 0, result.stderr
    assert "2/2 items labeled" in result.stderr
    assert "labeled 2/2 items" in result.stderr  # plain progress when piped
    coco = json.loads((tmp_path / "annotations.coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["person", "bus"]
    assert all(a["score"] >= 0.5 for a in coco["annotations"]) and coco["annotations"]
    assert (tmp_path / "summary.json").exists() and not (tmp_path / "failures.jsonl").exists()


def test_failed_items_exit_three_and_are_listed(sample_images, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    result = _run("label", sample_images[0], bad, "-m", "yolo11n-onnx", "-o", tmp_path / "out", "--dry-run")
    assert result.returncode == 3, result.stderr
    assert "1 item(s) failed" in result.stderr and "bad.jpg" in result.stderr
    failure = json.loads((tmp_path / "out" / "failures.jsonl").read_text())
    assert failure["source"] == str(bad) and "cannot decode" in failure["error"]
    assert (tmp_path / "out" / "preview" / "index.html").exists()
    assert not (tmp_path / "out" / "annotations.jsonl").exists()


def test_usage_and_configuration_errors(sample_images, tmp_path):
    usage = _run("label", sample_images[0], "-m", "yolo11n", "--confidence", "7")
    assert usage.returncode == 2 and "--confidence" in usage.stderr
    unknown = _run("label", sample_images[0], "-m", "yolo11n", "--labels", "unicorn", "-o", tmp_path)
    assert unknown.returncode == 1 and "unknown label(s) ['unicorn']" in unknown.stderr
    no_model = _run("label", sample_images[0], "-m", "yolo99")
    assert no_model.returncode == 1 and "Known model names" in no_model.stderr
    pairs = _run("label", sample_images[0], "-m", "yolo11n", "--label-threshold", "person")
    assert pairs.returncode == 2 and "NAME=VALUE" in pairs.stderr


def test_letterbox_option_reaches_the_engine_and_the_summary(sample_images, tmp_path):
    """``--letterbox square`` (the GPU's default) can be asked for on any device, and summary.json says which ran
    (a CPU run without it keeps rect: tests/test_gpu_batching.py); a value that is neither is refused."""
    result = _run(
        "label", *sample_images, "--model", "yolo11n", "--out", tmp_path, "--device", "cpu", "--letterbox", "square"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["settings"]["letterbox"] == "square"
    bad = _run("label", *sample_images, "--model", "yolo11n", "--out", tmp_path / "x", "--letterbox", "round")
    assert bad.returncode == 2 and "round" in bad.stderr
