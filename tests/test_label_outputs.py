"""One-shot runs never mix outputs: one run at a time per folder, earlier runs refused unless --overwrite or
--exist-ok, numbered default folders, per-item files written whole or not at all, an unwritable --out refused
before the model loads, and an --imgsz off the stride rounded up as ultralytics does."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avala_infer import ConfigError, Engine, label
from avala_infer.exporters.base import LOCK_NAME
from tests.conftest import ASSETS, need

CLI = [sys.executable, "-m", "avala_infer.cli"]


def _cli(*args, cwd=None, timeout=600):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _wait_for(path: Path, process: subprocess.Popen, deadline_s: float = 300) -> None:
    """Until ``path`` exists (a deadline against a hung test, not a measurement)."""
    end = time.monotonic() + deadline_s
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the first run ended early: {process.stderr.read() if process.stderr else ''}")
        if time.monotonic() > end:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


# A first run in its own process, held (after its first item) inside its progress callback until killed: it holds
# the folder's lock for as long as the test needs, whatever the machine's speed.
HELD_RUN = """
import sys, time
from pathlib import Path
from avala_infer import label

def hold(done, total, failed):
    Path(sys.argv[2]).touch()
    time.sleep(3600)

label(sys.argv[3:], "yolo11n-onnx", out=sys.argv[1], formats=["jsonl"], device="cpu", progress=hold)
"""


def test_a_second_run_into_a_busy_folder_is_refused_and_a_killed_run_leaves_no_stale_lock(sample_images, tmp_path):
    out, held = tmp_path / "out", tmp_path / "held"
    first = subprocess.Popen(
        [sys.executable, "-c", HELD_RUN, out, held, *sample_images],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(held, first)
        assert (out / LOCK_NAME).read_text().strip() == str(first.pid)
        second = _cli("label", *sample_images, "-m", "yolo11n-onnx", "-d", "cpu", "--out", out, "--overwrite")
        assert second.returncode == 1, second.stderr
        lines = _error_lines(second.stderr)
        print("busy:", lines)
        assert lines == [
            f"error: {out} is in use by another labeling run (pid {first.pid}); wait for it to end, or choose "
            "another output folder (--out)"
        ]
        assert first.poll() is None  # the first run goes on, its files untouched
        assert (out / "annotations.jsonl.part").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stdout.close()
        first.stderr.close()
    # killed: the lock file stays behind but is not held; what the dead run left counts as an earlier run's outputs
    assert (out / LOCK_NAME).exists()
    refused = _cli("label", *sample_images, "-m", "yolo11n-onnx", "-d", "cpu", "--out", out)
    assert refused.returncode == 1 and "holds the outputs of an earlier run (annotations.jsonl.part)" in refused.stderr
    again = _cli("label", *sample_images, "-m", "yolo11n-onnx", "-d", "cpu", "--out", out, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert len((out / "annotations.jsonl").read_text().splitlines()) == len(sample_images)
    assert sorted(p.name for p in out.iterdir()) == ["annotations.jsonl", "summary.json"]  # lock and tmp gone


def test_an_earlier_run_is_refused_unless_overwrite_or_exist_ok(engine_onnx, sample_images, tmp_path):
    out = tmp_path / "out"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    images = [*sample_images, bad]
    first = label(images, engine_onnx, out=out, formats=["jsonl", "coco", "yolo", "labelstudio"])
    assert first.failed == 1
    (out / "notes.txt").write_text("mine")  # not an output: never counted, never removed
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(ConfigError) as refused:
        label(sample_images, engine_onnx, out=out, formats=["jsonl"])
    message = str(refused.value)
    print("refused:", message)
    assert message == (
        f"{out} holds the outputs of an earlier run (annotations.coco.json, annotations.jsonl, failures.jsonl, "
        "labelstudio.config.xml, labelstudio.json, summary.json, ...); pass --overwrite (overwrite=True) to remove "
        "them first, --exist-ok (exist_ok=True) to write into the folder as it is, or another --out"
    )
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing touched
    with pytest.raises(ConfigError, match="not both"):
        label(sample_images, engine_onnx, out=out, overwrite=True, exist_ok=True)

    kept = label(sample_images, engine_onnx, out=out, formats=["jsonl"], exist_ok=True)  # as before this change
    assert kept.failed == 0 and (out / "annotations.coco.json").exists() and (out / "yolo").is_dir()

    fresh = label(sample_images, engine_onnx, out=out, formats=["jsonl"], overwrite=True)
    assert fresh.failed == 0
    assert sorted(p.name for p in out.iterdir()) == ["annotations.jsonl", "notes.txt", "summary.json"]
    assert len((out / "annotations.jsonl").read_text().splitlines()) == len(sample_images)

    dry = label(sample_images, engine_onnx, out=out, dry_run=True, overwrite=True)  # a dry run replaces it all too
    assert dry.dry_run and sorted(p.name for p in out.iterdir()) == ["notes.txt", "preview", "summary.json"]


def test_without_out_each_run_gets_a_new_numbered_folder(engine_onnx, sample_images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folders = [label(sample_images, engine_onnx).out_dir for _ in range(3)]
    assert folders == [Path("runs/label"), Path("runs/label2"), Path("runs/label3")]
    assert all((tmp_path / f / "annotations.jsonl").exists() for f in folders)
    assert label(sample_images, engine_onnx, exist_ok=True).out_dir == Path("runs/label")  # as ultralytics' exist_ok
    # a run that fails before writing anything leaves no empty numbered folder behind
    with pytest.raises(ConfigError):
        label(sample_images, engine_onnx, labels=["unicorn"])
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["label", "label2", "label3"]


@pytest.fixture(scope="module")
def cli_runs_without_out(sample_images, tmp_path_factory) -> tuple[Path, dict[int, tuple]]:
    """Two CLI runs of yolo11n in one working folder, without --out: at --imgsz 650 (off the stride), then 672.
    {imgsz: (the finished process, the folder it should have written)}; the two tests below read them (each CLI
    run costs CI several seconds)."""
    cwd = tmp_path_factory.mktemp("cli_without_out")
    runs = {}
    for size, expected in ((650, "runs/label"), (672, "runs/label2")):
        runs[size] = (_cli("label", *sample_images, "-m", "yolo11n", "-d", "cpu", "--imgsz", size, cwd=cwd), expected)
    return cwd, runs


def test_cli_without_out_writes_numbered_folders(cli_runs_without_out, sample_images):
    cwd, runs = cli_runs_without_out
    for result, expected in runs.values():
        assert result.returncode == 0, result.stderr
        assert f"annotations in {expected}" in result.stderr
        assert (cwd / expected / "annotations.jsonl").exists()
    both = _cli("label", *sample_images, "-m", "yolo11n-onnx", "--overwrite", "--exist-ok", cwd=cwd)
    assert both.returncode == 2 and "pass one" in both.stderr


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_out_is_one_line_before_the_model_loads(sample_images, tmp_path, where):
    a_file = tmp_path / "somefile"
    a_file.write_text("x")
    out = a_file / "sub" if where == "under_a_file" else Path("/proc/avala-infer-out")
    broken = tmp_path / "broken.pt"  # weights that fail to load: the folder's error must come first
    broken.write_bytes(b"not a checkpoint")
    result = _cli("label", sample_images[0], "-m", broken, "--trust-weights", "-d", "cpu", "--out", out)
    lines = _error_lines(result.stderr)
    print(where, lines)
    assert result.returncode == 1
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot use {out} as the output folder: ")
    assert "pass a folder you can write to" in lines[0]
    assert not (tmp_path / "somefile").is_dir()


# Each file may grow to 100 bytes in this run (RLIMIT_FSIZE; SIGXFSZ ignored, so a write past it fails with EFBIG,
# as on a full disk): the first YOLO label file (bus.txt, 190 bytes) or mask PNG (page.png, 893 bytes) fails half
# written.
SMALL_FILES = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
sys.argv = ["avala-infer", *sys.argv[1:]]
runpy.run_module("avala_infer.cli", run_name="__main__")
"""


@pytest.mark.parametrize(
    "model, fmt, folder", [("yolo11n-onnx", "yolo", "yolo/labels"), ("ppocrv4-det", "masks", "masks")]
)
def test_a_failed_write_leaves_no_half_written_per_item_file(tmp_path, model, fmt, folder):
    images = [
        need(ASSETS / "images" / "ultralytics" / "bus.jpg"),
        need(ASSETS / "images" / "skimage" / "page.png"),
    ]
    out, whole = tmp_path / "out", tmp_path / "whole"
    # the two runs are independent: started together, the second's start-up (imports, model load) overlaps the
    # first's instead of adding to CI's time
    limited = subprocess.Popen(
        [sys.executable, "-c", SMALL_FILES, "label", *images, "-m", model, "-f", fmt, "-d", "cpu", "--out", out],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        reference = _cli("label", *images, "-m", model, "-f", fmt, "-d", "cpu", "--out", whole)  # no size limit
        _, stderr = limited.communicate(timeout=600)
    finally:
        limited.kill()
        limited.wait()
    assert limited.returncode != 0 and "File too large" in stderr, stderr
    assert reference.returncode == 0, reference.stderr
    left = sorted(p.relative_to(out) for p in (out / folder).rglob("*") if p.is_file())
    print(
        fmt,
        "left:",
        [str(p) for p in left],
        "of",
        sorted(str(p.relative_to(whole)) for p in (whole / folder).rglob("*")),
    )
    assert len(left) < len(list((whole / folder).rglob("*")))  # the run did stop half way
    for path in left:  # what is left is whole: no half file under its real name, no temporary one
        assert (out / path).read_bytes() == (whole / path).read_bytes(), path


def test_imgsz_off_the_stride_is_rounded_up_with_a_warning(cli_runs_without_out):
    cwd, cli_runs = cli_runs_without_out
    runs = {}
    for size, (result, folder) in cli_runs.items():
        out = cwd / folder
        assert result.returncode == 0, result.stderr
        runs[size] = (
            result.stderr,
            [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()],
        )
        assert json.loads((out / "summary.json").read_text())["settings"]["input_size"] == 672
    warning = "input size 650 is not a multiple of yolo11n's stride 32: using 672"
    assert warning in runs[650][0] and warning not in runs[672][0]
    boxes = {size: [r["annotations"] for r in records] for size, (_, records) in runs.items()}
    print("boxes per image:", [len(a) for a in boxes[650]])
    assert boxes[650] == boxes[672] and all(boxes[650])


def test_segmentation_imgsz_off_the_stride_gives_the_rounded_sizes_masks(sample_images, caplog):
    need(ASSETS / "models" / "yolo11n-seg.pt")
    results = {}
    for size in (650, 672):
        with (
            caplog.at_level(logging.WARNING, logger="avala_infer"),
            Engine("yolo11n-seg", device="cpu", input_size=size) as engine,
        ):
            assert engine.predictor.spec.input_size == 672
            results[size] = list(engine.predict(sample_images))
    assert "input size 650 is not a multiple of yolo11n-seg's stride 32: using 672" in caplog.text
    for a, b in zip(results[650], results[672]):
        assert a.ok and b.ok and len(a.detections) > 0
        assert (a.detections.xyxy == b.detections.xyxy).all() and (a.detections.mask == b.detections.mask).all()
