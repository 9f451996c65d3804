"""Issue 10, item 9: quiet, honest output. The CLI shows the model load as one line; ultralytics' model summary
and the JPEG codec's warnings never reach the terminal (a damaged JPEG becomes its item's reason, or a logged
warning naming the file); the client's background worker logs to the ``avala_infer`` logger and prints nothing
unless the script configures logging; ``auto-label get`` lists failure reasons as ``watch`` does. Real
subprocesses capture stdout and stderr."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from avala_infer.engine.loaders import read_image
from avala_infer.engine.sources import Item
from avala_infer.errors import ItemError
from tests.conftest import ASSETS, need

pytestmark = [pytest.mark.assets]

CLI = [sys.executable, "-m", "avala_infer.cli"]
EXTRANEOUS = re.compile(r"Corrupt JPEG data: \d+ extraneous bytes before marker 0xd9")
CUT_SHORT = "Corrupt JPEG data: premature end of data segment"


@pytest.fixture
def images(tmp_path) -> Path:
    """bus.jpg and zidane.jpg, intact; junk.jpg (bus with 8 stray bytes before its end marker: decodes whole,
    libjpeg warns); cut.jpg (zidane cut in half, then an end marker: the bottom half is missing)."""
    folder = tmp_path / "images"
    folder.mkdir()
    source = need(ASSETS / "images" / "ultralytics")
    for name in ("bus.jpg", "zidane.jpg"):
        shutil.copy(source / name, folder / name)
    bus = (source / "bus.jpg").read_bytes()
    (folder / "junk.jpg").write_bytes(bus[:-2] + b"JUNKJUNK" + bus[-2:])
    zidane = (source / "zidane.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(zidane[: len(zidane) // 2] + b"\xff\xd9")
    return folder


def run(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300, cwd=cwd
    )


def test_label_shows_one_load_line_and_no_summary_or_codec_noise(images, tmp_path):
    out = tmp_path / "run"
    # yolo11n-seg.pt is an unfused checkpoint: ultralytics printed "YOLO11n-seg summary (fused): ..." on stdout
    result = run(*CLI, "label", str(images), "-m", "yolo11n-seg", "-d", "cpu", "-o", str(out))
    print(result.stderr)
    assert result.returncode == 3  # cut.jpg failed
    assert result.stdout == ""
    assert "summary" not in result.stderr
    lines = result.stderr.splitlines()
    loads = [line for line in lines if line.startswith("loading ")]
    assert len(loads) == 1 and loads[0].startswith("loading yolo11n-seg on cpu ... done in ") and loads[0][-2:] == " s"
    # no bare libjpeg line: each mention of the codec's message comes with the file it is about
    codec = [line for line in lines if "Corrupt JPEG data" in line]
    assert codec and all(("junk.jpg" in line) or ("cut.jpg" in line) for line in codec), codec
    assert not any(line.startswith("Corrupt JPEG") for line in lines)
    assert any(EXTRANEOUS.search(line) and "junk.jpg" in line and line.startswith("WARNING") for line in lines)
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [Path(f["source"]).name for f in failures] == ["cut.jpg"]
    assert CUT_SHORT in failures[0]["error"] and "cut.jpg" in failures[0]["error"]
    labeled = [json.loads(line)["key"] for line in (out / "annotations.jsonl").read_text().splitlines()]
    assert sorted(labeled) == ["bus.jpg", "junk.jpg", "zidane.jpg"]


def test_decode_keeps_codec_messages_off_stderr_and_passes_others_on(images, capfd, caplog):
    caplog.set_level(logging.WARNING, "avala_infer")
    image = read_image(Item(0, str(images / "junk.jpg"), "junk.jpg"), {})
    assert image.shape == (1080, 810, 3)
    with pytest.raises(ItemError, match="premature end of data segment") as cut:
        read_image(Item(1, str(images / "cut.jpg"), "cut.jpg"), {})
    assert str(images / "cut.jpg") in str(cut.value)
    assert capfd.readouterr().err == ""  # fd 2, where libjpeg writes
    [record] = caplog.records
    assert record.getMessage().startswith(f"{images / 'junk.jpg'}: Corrupt JPEG data: ")
    assert EXTRANEOUS.search(record.getMessage()) and record.getMessage().endswith("(decoded anyway; check the file)")


CLIENT_SCRIPT = textwrap.dedent(
    """
    import logging, sys, time
    from pathlib import Path
    if sys.argv[1] == "logging":
        logging.basicConfig(level=logging.WARNING)
    from avala_infer import Avala
    from avala_infer.projects.imports import import_sources
    from avala_infer.store import Store

    home, spec, image = sys.argv[2:5]
    store = Store(home)
    project = store.projects.create("quiet", models={"object_detection": spec})
    import_sources(store, project["uid"], [image])
    store.close()
    with Avala(home=home, device="cpu") as client:  # its worker runs the job on a thread of this process
        job = client.auto_label_jobs.create(project["uid"], confidence_threshold=0.25)
        for _ in range(600):
            job = client.auto_label_jobs.get(job.uid)
            if job.status in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.1)
    print("job", job.status)
    """
)


def test_client_worker_prints_nothing_unless_logging_is_configured(tmp_path):
    """A job whose weights are missing fails on the client's worker thread; the runner logs the error. With no
    logging configured the script's stderr stays empty (logging's lastResort printed it before); with
    logging configured the same error shows, so it goes through the logger."""
    script = tmp_path / "script.py"
    script.write_text(CLIENT_SCRIPT, encoding="utf-8")
    spec = tmp_path / "absent.yaml"
    spec.write_text(
        "name: absent\nmodel_type: object_detection\nbackend: onnxruntime\nweights: absent.onnx\n", encoding="utf-8"
    )
    bus = str(need(ASSETS / "images" / "ultralytics" / "bus.jpg"))
    quiet = run(sys.executable, str(script), "quiet", str(tmp_path / "h1"), str(spec), bus, cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "job failed\n" and quiet.stderr == ""
    told = run(sys.executable, str(script), "logging", str(tmp_path / "h2"), str(spec), bus, cwd=tmp_path)
    assert told.stdout == "job failed\n"
    assert "ERROR:avala_infer.jobs.runner:job " in told.stderr and "'absent.onnx'" in told.stderr


def test_a_crashed_worker_thread_logs_instead_of_printing(tmp_path):
    """A worker thread that cannot even open its store (the home is a file): threading's excepthook printed a
    traceback to the user's stderr; now the error goes to the avala_infer logger."""
    home = tmp_path / "not-a-folder"
    home.write_text("", encoding="utf-8")
    code = (
        "import logging, sys\n"
        "if sys.argv[1] == 'logging': logging.basicConfig()\n"
        "from avala_infer.jobs import Worker\n"
        f"worker = Worker({str(home)!r}, dispatch=False).start()\n"
        "worker._thread.join(30)\n"
        "print('alive' if worker._thread.is_alive() else 'stopped')\n"
    )
    quiet = run(sys.executable, "-c", code, "quiet", cwd=tmp_path)
    assert quiet.stdout == "stopped\n" and quiet.stderr == ""
    told = run(sys.executable, "-c", code, "logging", cwd=tmp_path)
    assert "ERROR:avala_infer.jobs.worker:job worker" in told.stderr and "Traceback" in told.stderr


def test_auto_label_get_lists_failure_reasons(images, tmp_path):
    home = tmp_path / "home"
    created = run(*CLI, "projects", "create", "streets", "--model", "object_detection=yolo11n-onnx",
                  "--home", str(home), "--json")  # fmt: skip
    assert created.returncode == 0, created.stderr
    uid = json.loads(created.stdout)["uid"]
    imported = run(*CLI, "import", uid, str(images / "bus.jpg"), str(images / "cut.jpg"), "--home", str(home))
    assert imported.returncode == 0, imported.stderr
    job = run(*CLI, "auto-label", "create", uid, "--run", "-d", "cpu", "--home", str(home), "--json")
    assert job.returncode == 3, job.stderr  # completed with a failed item
    job_uid = json.loads(job.stdout)["uid"]
    shown = run(*CLI, "auto-label", "get", job_uid, "--home", str(home))
    assert shown.returncode == 0, shown.stderr
    print(shown.stdout)
    reasons = [line for line in shown.stdout.splitlines() if line.startswith("  failed: ")]
    assert len(reasons) == 1 and reasons[0].startswith("  failed: cut.jpg: ") and CUT_SHORT in reasons[0]
    # the same lines `watch` prints when the job ends
    watched = run(*CLI, "auto-label", "watch", job_uid, "--home", str(home))
    assert reasons[0] in watched.stderr.splitlines()
