"""Issue 10, item 10: ``avala-infer models pull NAME`` fetches a spec's weights from its ``url:`` (or a mirror),
checks a pinned ``sha256:``, stores them in the user model folder and records them as trusted; it makes no
request when the weights are there already, and nothing else downloads (a missing-weights error names the
command). Every download comes from a real HTTP server on 127.0.0.1 serving a temporary folder, whose requests
are counted."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from avala_infer.errors import WeightsDownloadError, WeightsHashMismatchError, WeightsNotFoundError
from avala_infer.pull import pull
from avala_infer.specs import find_spec, resolve_weights, weights_dirs
from avala_infer.trust import REGISTRY_FILE, sha256_of
from tests.conftest import ASSETS, need

pytestmark = [pytest.mark.assets]

REPO = Path(__file__).resolve().parents[1]


class Served:
    """A folder served over HTTP on 127.0.0.1 from a thread; ``requests`` lists the paths asked for."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=folder))
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served(tmp_path):
    folder = tmp_path / "www"
    (folder / "releases").mkdir(parents=True)
    (folder / "mirror").mkdir()
    shutil.copy(need(ASSETS / "models" / "yolo11n.onnx"), folder / "releases" / "yolo11n.onnx")
    server = Served(folder)
    yield server
    server.close()


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A host with no weights anywhere: empty AVALA_INFER_MODELS, an empty user data folder, a spec folder."""
    env = {
        "AVALA_INFER_MODELS": str(tmp_path / "no-weights"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "AVALA_INFER_SPECS": str(tmp_path / "specs"),
    }
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "specs").mkdir()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AVALA_INFER_MIRROR", raising=False)
    return env


def write_spec(env: dict, name: str, url: str, sha256: str | None = None) -> None:
    lines = [
        f"name: {name}",
        "model_type: object_detection",
        "backend: onnxruntime",
        "weights: yolo11n.onnx",
        f"url: {url}",
    ]
    if sha256:
        lines.append(f"sha256: {sha256}")
    Path(env["AVALA_INFER_SPECS"], f"{name}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def user_folder_files() -> list[str]:
    folder = weights_dirs()[-1]
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_pull_stores_a_good_file_and_records_it(served, fresh):
    digest = sha256_of(served.folder / "releases" / "yolo11n.onnx")
    write_spec(fresh, "pulled", f"{served.url}/releases/yolo11n.onnx", sha256=digest)

    result = pull("pulled")

    target = Path(fresh["XDG_DATA_HOME"]) / "avala-infer" / "models" / "yolo11n.onnx"
    assert result.downloaded and result.path == target and result.sha256 == digest and result.pinned
    assert served.requests == ["/releases/yolo11n.onnx"]
    assert sha256_of(target) == digest
    assert user_folder_files() == [REGISTRY_FILE, "yolo11n.onnx"]  # no temporary file left beside it
    entry = json.loads((target.parent / REGISTRY_FILE).read_text())["files"]["yolo11n.onnx"]
    assert entry["sha256"] == digest and entry["source"] == f"{served.url}/releases/yolo11n.onnx"

    again = pull("pulled")  # present now: nothing fetched
    assert not again.downloaded and again.path == target and len(served.requests) == 1


def test_a_wrong_hash_is_refused_and_nothing_is_stored(served, fresh):
    write_spec(fresh, "pinned", f"{served.url}/releases/yolo11n.onnx", sha256="ab" * 32)
    with pytest.raises(WeightsHashMismatchError, match="Nothing was stored") as caught:
        pull("pinned")
    assert sha256_of(served.folder / "releases" / "yolo11n.onnx") in str(caught.value)
    assert served.requests == ["/releases/yolo11n.onnx"]
    assert user_folder_files() == []  # neither the file nor its temporary copy
    with pytest.raises(WeightsNotFoundError):
        resolve_weights(find_spec("pinned"))


def test_http_errors_store_nothing_and_say_what_happened(served, fresh):
    write_spec(fresh, "gone", f"{served.url}/releases/missing.onnx")
    with pytest.raises(WeightsDownloadError, match="HTTP 404"):
        pull("gone")
    assert user_folder_files() == []


def test_present_weights_cause_no_request(served, fresh, monkeypatch):
    monkeypatch.setenv("AVALA_INFER_MODELS", str(need(ASSETS / "models")))
    write_spec(fresh, "here", f"{served.url}/releases/yolo11n.onnx")
    result = pull("here")
    assert not result.downloaded and result.path == (ASSETS / "models" / "yolo11n.onnx").resolve()
    # the bundled yolo11n spec names the official release; with its weights present, no request either
    bundled = find_spec("yolo11n")
    assert bundled.url == "https://github.com/ultralytics/assets/releases/download/v8.3.0/yolo11n.pt"
    assert not pull("yolo11n", mirror=f"{served.url}/mirror").downloaded
    assert served.requests == []


def test_mirror_option_and_env_replace_the_host(served, fresh, monkeypatch):
    shutil.copy(served.folder / "releases" / "yolo11n.onnx", served.folder / "mirror" / "yolo11n.onnx")
    write_spec(fresh, "far", "https://weights.example.invalid/v1/yolo11n.onnx")
    monkeypatch.setenv("AVALA_INFER_MIRROR", f"{served.url}/mirror/")
    assert pull("far").downloaded
    assert served.requests == ["/mirror/yolo11n.onnx"]
    # --mirror (the argument) wins over the environment; a file:// folder is a mirror too
    local = fresh["AVALA_INFER_SPECS"] + "/../usb"
    os.makedirs(local)
    shutil.copy(served.folder / "releases" / "yolo11n.onnx", Path(local) / "yolo11n.onnx")
    result = pull("far", mirror=Path(local).resolve().as_uri(), force=True)
    assert result.downloaded and result.url.startswith("file://") and len(served.requests) == 1


def test_missing_weights_name_the_command_and_loading_downloads_nothing(served, fresh):
    from avala_infer import Engine

    write_spec(fresh, "absent", f"{served.url}/releases/yolo11n.onnx")
    with pytest.raises(WeightsNotFoundError, match="avala-infer models pull absent"):
        Engine("absent", device="cpu")
    assert served.requests == [] and user_folder_files() == []


def test_cli_pull_then_label_on_a_fresh_host(served, fresh, tmp_path):
    """The fresh-machine path end to end with the bundled yolo11n spec: `models pull yolo11n` (from a mirror
    standing in for the release host) stores the .pt as trusted, then `label` runs on it without
    --trust-weights; pulling again makes no request."""
    shutil.copy(need(ASSETS / "models" / "yolo11n.pt"), served.folder / "mirror" / "yolo11n.pt")
    env = {**os.environ, **fresh, "AVALA_INFER_SPECS": "", "AVALA_INFER_MIRROR": f"{served.url}/mirror"}
    cli = [str(Path(sys.executable).with_name("avala-infer"))]
    first = subprocess.run([*cli, "models", "pull", "yolo11n"], env=env, capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 0, first.stderr
    stored = Path(fresh["XDG_DATA_HOME"]) / "avala-infer" / "models" / "yolo11n.pt"
    assert f"into {stored}" in first.stdout and "not pinned by the spec" in first.stdout
    assert served.requests == ["/mirror/yolo11n.pt"]

    second = subprocess.run([*cli, "models", "pull", "yolo11n"], env=env, capture_output=True, text=True, cwd=REPO)
    assert second.returncode == 0 and "nothing to pull" in second.stdout and len(served.requests) == 1

    bus = need(ASSETS / "images" / "ultralytics" / "bus.jpg")
    out = tmp_path / "run"
    run = subprocess.run(
        [*cli, "label", str(bus), "-m", "yolo11n", "-d", "cpu", "-o", str(out)],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    record = json.loads((out / "annotations.jsonl").read_text().splitlines()[0])
    names = [a["label"] for a in record["annotations"]]
    print("labels from the pulled weights:", names)
    assert "bus" in names and names.count("person") >= 4
