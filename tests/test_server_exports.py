"""Issue 12: exports over HTTP. The official Avala SDK (``avala==0.10.0``), unmodified, creates exports of a
project labeled by a real auto-label job (the YOLO11n ONNX export over 4 coco128 images) on a real
``avala_infer.server`` app served by uvicorn on 127.0.0.1; the app's threads write them; ``exports.wait`` sees them
end, and their ``download_url`` serves what ``client.projects.export`` writes. No mocks."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server extra: pip install -e '.[server]'")
avala = pytest.importorskip("avala", reason="the official SDK is a test extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx")

from avala_infer import Avala  # noqa: E402
from avala_infer.server.app import create_app  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.jobs_helpers import make_project, val_images, write_spec  # noqa: E402
from tests.server_helpers import KEY, Served, ThreadServer  # noqa: E402

N_IMAGES = 4


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server over a project of ``N_IMAGES`` images that a job (created with the SDK) has labeled, and a
    second project with no results."""
    root = tmp_path_factory.mktemp("exports")
    images = val_images(N_IMAGES)
    home = root / "home"
    project = make_project(home, images, write_spec(root / "specs"), name="streets")
    server = ThreadServer(create_app(home, [KEY])).start()
    served = Served(home=home, port=server.port, project=project, images=images)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AVALA_ALLOW_INSECURE_BASE_URL", "true")
            sdk = avala.Client(api_key=KEY, base_url=served.base_url)
            job = sdk.auto_label_jobs.create(project, model_type="object_detection")
            sdk.close()
            with Avala(home=home, worker=False) as local:
                assert local.auto_label_jobs.wait(job.uid, timeout=180).status == "completed"
        yield served
    finally:
        server.stop()


def raw(served, method: str, path: str, **kwargs) -> httpx.Response:
    headers = {"X-Avala-Api-Key": KEY}
    return httpx.request(method, served.base_url + path, headers=headers, follow_redirects=False, timeout=30, **kwargs)


def download(url: str) -> httpx.Response:
    return httpx.get(url, headers={"X-Avala-Api-Key": KEY}, follow_redirects=False, timeout=30)


def local_export(served, out: Path, formats: list[str]) -> list[Path]:
    """What the Python API writes for the same project (``client.projects.export``)."""
    with Avala(home=served.home, worker=False) as local:
        return local.projects.export(served.project, out, formats)


def test_an_export_after_a_job_serves_the_records_the_python_api_writes(sdk, served, tmp_path):
    created = sdk.exports.create(project=served.project)
    assert created.status in ("pending", "exporting", "exported") and created.uid.startswith("export_")
    export = sdk.exports.wait(created.uid, interval=0.5, timeout=60)
    assert export.status == "exported", raw(served, "GET", f"/exports/{created.uid}/").json()
    assert export.download_url == f"{served.base_url}/media/exports/{created.uid}/"
    assert export.created_at.utcoffset().total_seconds() == 0 and export.updated_at >= export.created_at
    body = raw(served, "GET", f"/exports/{created.uid}/").json()
    assert (body["format"], body["formats"], body["error"], body["project"]) == (
        "jsonl",
        ["jsonl"],
        None,
        served.project,
    )
    assert "file" not in body  # the local file name is not shown

    answer = download(export.download_url)
    assert answer.status_code == 200, answer.text
    served_records = [json.loads(line) for line in answer.text.splitlines()]
    (written,) = local_export(served, tmp_path / "local", ["jsonl"])
    local_records = [json.loads(line) for line in written.read_text().splitlines()]
    assert served_records == local_records and len(served_records) == N_IMAGES
    assert sum(len(r["annotations"]) for r in served_records) > 0

    assert created.uid in [e.uid for e in sdk.exports.list().items]
    assert sdk.exports.get(created.uid).status == "exported"


def test_a_dataset_export_is_its_projects(sdk, served):
    dataset = sdk.datasets.list().items[0].uid
    export = sdk.exports.wait(sdk.exports.create(dataset=dataset).uid, interval=0.5, timeout=60)
    assert export.status == "exported"
    assert raw(served, "GET", f"/exports/{export.uid}/").json()["project"] == served.project


def test_a_coco_export_loads_in_pycocotools(sdk, served, tmp_path):
    coco_api = pytest.importorskip("pycocotools.coco")
    answer = raw(served, "POST", "/exports/", json={"project": served.project, "format": "coco"})
    assert answer.status_code == 201, answer.text
    export = sdk.exports.wait(answer.json()["uid"], interval=0.5, timeout=60)
    assert export.status == "exported"
    path = tmp_path / "served.coco.json"
    path.write_bytes(download(export.download_url).content)
    served_coco = coco_api.COCO(str(path))
    (written,) = local_export(served, tmp_path / "local", ["coco"])
    local_coco = coco_api.COCO(str(written))
    assert len(served_coco.getImgIds()) == N_IMAGES
    assert served_coco.dataset["annotations"] == local_coco.dataset["annotations"]
    assert served_coco.dataset["categories"] == local_coco.dataset["categories"]


def test_several_files_download_as_one_zip(sdk, served, tmp_path):
    answer = raw(served, "POST", "/exports/", json={"project": served.project, "format": ["yolo", "labelstudio"]})
    assert answer.status_code == 201, answer.text
    export = sdk.exports.wait(answer.json()["uid"], interval=0.5, timeout=60)
    assert export.status == "exported"
    got = download(export.download_url)
    assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
    names = sorted(zipfile.ZipFile(io.BytesIO(got.content)).namelist())
    local = tmp_path / "local"
    local_export(served, local, ["yolo", "labelstudio"])
    files = [p for p in local.rglob("*") if p.is_file()]
    # the zip holds what the writers wrote; yolo/images/ links to the imported files on this host are left out
    assert any(p.is_symlink() and p.parent.name == "images" for p in files)
    expected = sorted(p.relative_to(local).as_posix() for p in files if not p.is_symlink())
    assert names == expected and "labelstudio.json" in names
    assert len([n for n in names if n.startswith("yolo/") and n.endswith(".txt")]) >= N_IMAGES


def test_an_unknown_project_or_dataset_or_format_is_refused_with_a_string_detail(sdk, served):
    with pytest.raises(avala.errors.NotFoundError, match="proj_nope"):
        sdk.exports.create(project="proj_nope")
    with pytest.raises(avala.errors.NotFoundError, match="ds_nope"):
        sdk.exports.create(dataset="ds_nope")
    for body, status in (
        ({"project": "proj_nope"}, 404),
        ({"project": served.project, "format": "pdf"}, 400),
        ({}, 400),
        ({"project": served.project, "colour": "red"}, 422),
    ):
        answer = raw(served, "POST", "/exports/", json=body)
        assert answer.status_code == status and isinstance(answer.json()["detail"], str), (body, answer.text)
    assert "jsonl" in raw(served, "POST", "/exports/", json={"project": served.project, "format": "pdf"}).text
    assert raw(served, "GET", "/exports/export_nope/").status_code == 404
    assert raw(served, "GET", "/media/exports/export_nope/").status_code == 404


def test_a_project_without_results_ends_failed_with_the_reason(sdk, served):
    with Avala(home=served.home, worker=False) as local:
        empty = local.projects.create("empty", models={"object_detection": "yolo11n"}).uid
    export = sdk.exports.wait(sdk.exports.create(project=empty).uid, interval=0.5, timeout=60)
    assert export.status == "failed" and export.download_url is None
    body = raw(served, "GET", f"/exports/{export.uid}/").json()
    assert "run an auto-label job first" in body["error"] and body["error_message"] == body["error"]
    answer = raw(served, "GET", f"/media/exports/{export.uid}/")
    assert answer.status_code == 404 and "failed" in answer.json()["detail"]
    assert not (served.home / "exports" / export.uid).exists()  # nothing half-written is left


def test_an_export_ending_emits_export_completed_or_failed_to_agents(sdk, served):
    """avala-agents can register for export.completed / export.failed: the store emits them when an export ends
    (in the transaction that ends it), with the export's uid in the payload."""
    with Avala(home=served.home, worker=False) as local:
        agent = local.agents.create(name="exports-watch", events=["export.completed", "export.failed"])
        empty = local.projects.create("nothing-yet", models={"object_detection": "yolo11n"}).uid
    done = sdk.exports.wait(sdk.exports.create(project=served.project).uid, interval=0.5, timeout=60)
    failed = sdk.exports.wait(sdk.exports.create(project=empty).uid, interval=0.5, timeout=60)
    assert (done.status, failed.status) == ("exported", "failed")
    leased = raw(served, "GET", f"/agents/{agent.uid}/executions/", params={"status": "pending"}).json()["results"]
    seen = {e["event_type"]: e["event_payload"] for e in leased}
    assert set(seen) == {"export.completed", "export.failed"}, leased
    assert seen["export.completed"]["export_uid"] == done.uid
    assert seen["export.completed"]["project_uid"] == served.project
    assert seen["export.failed"]["export_uid"] == failed.uid
    assert "run an auto-label job first" in seen["export.failed"]["data"]["error"]


def test_exports_list_pages_with_limit(sdk, served):
    for _ in range(2):
        sdk.exports.create(project=served.project)
    first = sdk.exports.list(limit=1)
    assert len(first.items) == 1 and first.has_more
    second = sdk.exports.list(limit=1, cursor=first.next_cursor)
    assert second.items[0].uid != first.items[0].uid


KILLED_EXPORT = """
import os, signal, sys
from avala_infer.store import Store, register_worker, worker_id
holder = worker_id()
with Store(sys.argv[1]) as store:
    uid = store.exports.create(sys.argv[2], ["jsonl"], holder=holder)["uid"]
    assert store.exports.start(uid, holder)
folder = os.path.join(sys.argv[1], "exports", uid, "data")
os.makedirs(folder)
open(os.path.join(folder, "annotations.jsonl.partial"), "w").write("{")
print(uid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_an_export_left_exporting_by_a_killed_process_is_marked_failed(sdk, served):
    done = subprocess.run(
        [sys.executable, "-c", KILLED_EXPORT, str(served.home), served.project],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == -9, done.stderr
    uid = done.stdout.strip()
    assert (served.home / "exports" / uid / "data").is_dir()
    export = sdk.exports.get(uid)  # the next read finds its process gone
    assert export.status == "failed"
    error = raw(served, "GET", f"/exports/{uid}/").json()["error"]
    assert "stopped before it finished" in error and "create the export again" in error
    assert not (served.home / "exports" / uid).exists()  # its partial files are removed


def test_the_download_serves_only_the_exports_own_file(sdk, served, tmp_path):
    export = sdk.exports.wait(sdk.exports.create(project=served.project).uid, interval=0.5, timeout=60)
    for path in ("/media/exports/..%2f..%2fapi-key/", "/media/exports/%2e%2e/", "/media/exports/../exports/"):
        answer = raw(served, "GET", path)
        assert answer.status_code == 404 and isinstance(answer.json()["detail"], str), (path, answer.text)
    file = served.home / "exports" / export.uid / "data" / "annotations.jsonl"
    secret = tmp_path / "secret.txt"
    secret.write_text("not for download")
    file.unlink()
    file.symlink_to(secret)  # the export's file swapped for a link out of the home
    answer = download(export.download_url)
    assert answer.status_code == 404 and "not for download" not in answer.text
    assert httpx.get(export.download_url, timeout=30).status_code == 401  # the key is needed

    moved = sdk.exports.wait(sdk.exports.create(project=served.project).uid, interval=0.5, timeout=60)
    assert download(moved.download_url).status_code == 200
    folder = served.home / "exports" / moved.uid
    folder.rename(tmp_path / "moved")  # the same files, reached through a symlinked folder
    folder.symlink_to(tmp_path / "moved")
    answer = download(moved.download_url)
    assert answer.status_code == 404 and str(served.home) not in answer.json()["detail"]


def test_the_readmes_sdk_snippet_runs_against_the_server(served, monkeypatch):
    """The README's "Use the official Avala SDK and CLI" Python block, as a reader runs it (only the port changed):
    a job created over HTTP, its status read, a project exported and its download URL printed."""
    import contextlib
    import re

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Use the official Avala SDK and CLI") :]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "http://127.0.0.1:8000/api/v1" in block
    monkeypatch.setenv("AVALA_API_KEY", KEY)
    monkeypatch.setenv("AVALA_ALLOW_INSECURE_BASE_URL", "false")  # the block sets it itself
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block.replace("http://127.0.0.1:8000/api/v1", served.base_url), "README.md", "exec"), {})
    status, url = out.getvalue().split()
    assert status in ("pending", "running", "completed")
    assert re.fullmatch(re.escape(served.base_url) + r"/media/exports/export_[0-9a-f]+/", url)
    assert download(url).status_code == 200
