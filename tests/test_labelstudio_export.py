"""Label Studio tasks point at images Label Studio can serve: ``--ls-root`` (local files) and ``--ls-url-prefix``,
on ``label`` and on ``export``; an image outside the root is an error naming the root."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from avala_infer import Avala, label
from avala_infer.errors import ConfigError
from avala_infer.exporters.labelstudio import ImageUrls
from avala_infer.jobs import Worker
from avala_infer.projects.exports import export_project
from tests.conftest import VAL_IMAGES, need

NAMES = {"000000000139.jpg": "living room #1.jpg", "000000000632.jpg": "bed & room.jpg"}  # names to quote


@pytest.fixture()
def served(tmp_path):
    """A Label Studio document root holding two images under data/shots/, one name with a space and a '#'."""
    root = tmp_path / "ls-root"
    shots = root / "data" / "shots"
    shots.mkdir(parents=True)
    for name, target in NAMES.items():
        shutil.copy(need(VAL_IMAGES / name), shots / target)
    return root, shots


def _images(path) -> list[str]:
    return [task["data"]["image"] for task in json.loads(path.read_text())]


def test_image_urls_follow_label_studios_conventions(tmp_path):
    (tmp_path / "a b").mkdir()
    local = ImageUrls(tmp_path)
    assert local(str(tmp_path / "a b" / "x#1.jpg")) == "/data/local-files/?d=a%20b/x%231.jpg"
    prefixed = ImageUrls(tmp_path, "http://files.local:8081/images/")
    assert prefixed(str(tmp_path / "a b" / "x.jpg")) == "http://files.local:8081/images/a%20b/x.jpg"
    assert ImageUrls()(str(tmp_path / "x.jpg")) == str(tmp_path / "x.jpg")  # neither: the path, as before
    with pytest.raises(ConfigError, match=rf"outside the Label Studio root {tmp_path / 'a b'}"):
        ImageUrls(tmp_path / "a b")(str(tmp_path / "x.jpg"))
    with pytest.raises(ConfigError, match="is not a folder"):
        ImageUrls(tmp_path / "missing")


def test_label_writes_local_files_and_prefixed_urls(engine_pt, served, tmp_path):
    root, shots = served
    report = label([shots], engine_pt, out=tmp_path / "local", formats=["labelstudio"], ls_root=root)
    assert report.succeeded == 2
    assert sorted(_images(tmp_path / "local" / "labelstudio.json")) == [
        "/data/local-files/?d=data/shots/bed%20%26%20room.jpg",
        "/data/local-files/?d=data/shots/living%20room%20%231.jpg",
    ]
    label(
        [shots],
        engine_pt,
        out=tmp_path / "web",
        formats=["labelstudio"],
        ls_url_prefix="http://h:8081/s",
        ls_root=shots,
    )
    assert sorted(_images(tmp_path / "web" / "labelstudio.json")) == [
        "http://h:8081/s/bed%20%26%20room.jpg",
        "http://h:8081/s/living%20room%20%231.jpg",
    ]


def test_an_image_outside_the_root_is_refused_on_the_cli_before_the_model_loads(served, tmp_path):
    root, shots = served
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(shots / "bed & room.jpg", elsewhere / "x.jpg")
    spec = tmp_path / "ghost.yaml"  # weights that do not exist: loading the model would fail otherwise
    spec.write_text(
        "name: ghost\nmodel_type: object_detection\nbackend: ultralytics\nweights: no-such-weights.pt\nlabels: [a]\n"
    )
    command = [sys.executable, "-m", "avala_infer.cli", "label", str(shots), str(elsewhere), "-m", str(spec)]
    result = subprocess.run(
        [*command, "-f", "labelstudio", "--ls-root", str(root), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"error: {elsewhere} is outside the Label Studio root {root}: Label Studio serves only files under it; "
        "pass a --ls-root (ls_root=) that holds every image\n"
    )
    assert not (tmp_path / "o").exists()
    wrong_format = subprocess.run(
        [*command, "-f", "jsonl", "--ls-root", str(root), "-o", str(tmp_path / "o")], capture_output=True, text=True
    )
    assert wrong_format.returncode == 1 and "apply to the labelstudio format" in wrong_format.stderr


def test_project_export_points_at_the_root_and_names_it_when_an_item_is_outside(served, tmp_path):
    root, shots = served
    home = tmp_path / "home"
    with Avala(home=home, worker=False) as client:
        project = client.projects.create("rooms", models={"object_detection": "yolo11n"})
        client.projects.import_items(project.uid, [shots])
        client.auto_label_jobs.create(project.uid, model_type="object_detection")
        assert Worker(home, device="cpu", poll_s=0.05).run(until_idle=True) >= 1
        store = client._store
        export_project(store, project.uid, tmp_path / "ls", ["labelstudio"], ls_root=root)
        assert sorted(_images(tmp_path / "ls" / "labelstudio.json")) == [
            "/data/local-files/?d=data/shots/bed%20%26%20room.jpg",
            "/data/local-files/?d=data/shots/living%20room%20%231.jpg",
        ]
        cli = subprocess.run(
            [sys.executable, "-m", "avala_infer.cli", "export", project.uid, "-f", "labelstudio", "-o",
             str(tmp_path / "cli"), "--ls-root", str(root / "data"), "--ls-url-prefix", "https://ls.example/media",
             "--home", str(home)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert sorted(_images(tmp_path / "cli" / "labelstudio.json")) == [
            "https://ls.example/media/shots/bed%20%26%20room.jpg",
            "https://ls.example/media/shots/living%20room%20%231.jpg",
        ]
        with pytest.raises(ConfigError, match=rf"outside the Label Studio root {tmp_path / 'other'}"):
            (tmp_path / "other").mkdir()
            export_project(store, project.uid, tmp_path / "bad", ["labelstudio"], ls_root=tmp_path / "other")
        assert not list((tmp_path / "bad").glob("*"))  # nothing half-written
