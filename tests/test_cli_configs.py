"""The YAML configs of ``configs/`` and ``--config``: every example loads (and is accepted by the client), options
given on the command line override the file, unknown keys and bad values are refused by name, and one project
and job are run end to end from their configs (real subprocesses, a real store, yolo11n on the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from avala_infer.cli.config_files import config_keys, load_config
from avala_infer.errors import ConfigError
from tests.conftest import VAL_IMAGES, need

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
PROJECT_CONFIGS = [path for path in CONFIGS if path.name.startswith("project-")]
JOB_CONFIGS = [path for path in CONFIGS if not path.name.startswith("project-")]
IMAGES = ["000000000139.jpg", "000000001532.jpg", "000000001584.jpg", "000000006723.jpg"]  # three street scenes


def _run(home, *args):
    command = [sys.executable, "-m", "avala_infer.cli", *map(str, args), "--home", str(home)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ})


def _json(home, *args):
    result = _run(home, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _project_config_for(job_config: Path) -> Path:
    """The example project a job config is written for: the one serving its model type."""
    model_type = load_config(job_config, "job")["model_type"]
    return next(p for p in PROJECT_CONFIGS if model_type in load_config(p, "project")["models"])


def test_the_examples_are_there():
    assert len(PROJECT_CONFIGS) >= 2 and len(JOB_CONFIGS) >= 3
    assert any(load_config(path, "job").get("dry_run") for path in JOB_CONFIGS)  # a dry run among them


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_each_config_loads_and_the_client_accepts_it(path, tmp_path):
    kind = "project" if path in PROJECT_CONFIGS else "job"
    config = load_config(path, kind)
    assert config == yaml.safe_load(path.read_text(encoding="utf-8"))  # every key kept, as written
    assert set(config) <= set(config_keys(kind))
    home = tmp_path / "home"
    project_config = path if kind == "project" else _project_config_for(path)
    project = _json(home, "projects", "create", "--config", project_config)
    expected = load_config(project_config, "project")
    assert project["name"] == expected["name"] and project["data_type"] == expected["data_type"]
    assert project["ontology"] == expected["ontology"]
    assert set(project["models"]) == set(expected["models"])
    if kind == "job":
        job = _json(home, "auto-label", "create", project["uid"], "--config", path)  # queued, not run
        assert job["status"] == "pending" and job["model_type"] == config["model_type"]
        assert job["confidence_threshold"] == config.get("confidence_threshold", 0.25)
        assert job["labels"] == config.get("labels", [])
        assert job["dry_run"] == config.get("dry_run", False)


def test_command_line_options_override_the_file(tmp_path):
    home = tmp_path / "home"
    vehicles = REPO / "configs" / "project-vehicles.yaml"
    project = _json(home, "projects", "create", "lorries", "--config", vehicles, "--label", "truck", "--label", "car")
    assert project["name"] == "lorries" and project["ontology"] == ["truck", "car"]
    assert project["models"] == {"object_detection": "yolo11n"}
    assert project["label_maps"]["object_detection"] == {"motorcycle": "motorbike", "bicycle": None}  # the file's
    remapped = _json(home, "projects", "create", "--config", vehicles, "--map", "truck=lorry")
    assert remapped["name"] == "vehicles" and remapped["label_maps"]["object_detection"] == {"truck": "lorry"}
    job = _json(home, "auto-label", "create", project["uid"], "--config", REPO / "configs" / "preview-vehicles.yaml",
                "--confidence", "0.6", "--no-dry-run", "--labels", "car")  # fmt: skip
    assert (job["confidence_threshold"], job["dry_run"], job["labels"]) == (0.6, False, ["car"])
    nameless = _run(home, "projects", "create", "--label", "car")
    assert nameless.returncode == 2 and "give the project's NAME (or a --config naming it)" in nameless.stderr


def test_unknown_keys_and_bad_values_are_refused_by_name(tmp_path):
    home = tmp_path / "home"
    typo = tmp_path / "typo.yaml"
    typo.write_text("model_type: object_detection\nconfidence: 0.3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown key 'confidence' in the job config .*typo\.yaml; valid keys: "):
        load_config(typo, "job")
    project = _json(home, "projects", "create", "p", "--model", "object_detection=yolo11n")
    refused = _run(home, "auto-label", "create", project["uid"], "--config", typo)
    assert refused.returncode == 1
    assert "unknown key 'confidence'" in refused.stderr
    assert "valid keys: model_type, confidence_threshold, labels, dry_run, aggregation, overwrite" in refused.stderr
    assert _json(home, "auto-label", "list")["items"] == []  # nothing was queued
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: p\nmodels: {object_detection: {model: yolo11n, labelmap: {}}}\n", encoding="utf-8")
    refused = _run(home, "projects", "create", "--config", bad)
    assert refused.returncode == 1 and "models in the project config" in refused.stderr
    bad.write_text("name: p\nontology: car\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="ontology in the project config .* must be a list of label names"):
        load_config(bad, "project")
    bad.write_text("- name\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be a mapping of keys to values, got list"):
        load_config(bad, "project")


def test_a_project_and_a_job_from_their_configs_end_to_end(tmp_path, weights_pt):
    home = tmp_path / "home"
    project = _json(home, "projects", "create", "--config", REPO / "configs" / "project-vehicles.yaml")
    imported = _run(home, "import", project["uid"], *(need(VAL_IMAGES / name) for name in IMAGES))
    assert imported.returncode == 0 and imported.stdout.strip() == f"{len(IMAGES)} created, 0 existing, 0 failed"
    run = _run(home, "auto-label", "create", project["uid"], "--config", REPO / "configs" / "detect-vehicles.yaml",
               "--run", "--device", "cpu", "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["status"] == "completed" and job["successful_items"] == len(IMAGES) and job["failed_items"] == 0
    assert job["confidence_threshold"] == 0.4 and job["labels"] == ["car", "truck", "bus", "motorbike"]
    per_label = job["summary"]["per_label"]
    assert per_label and set(per_label) <= {"car", "truck", "bus", "motorbike"}  # the job's labels only
    out = tmp_path / "out"
    exported = _run(home, "export", project["uid"], "-f", "coco", "-o", out)
    assert exported.returncode == 0, exported.stderr
    coco = json.loads((out / "annotations.coco.json").read_text(encoding="utf-8"))
    assert [c["name"] for c in coco["categories"]] == ["car", "truck", "bus", "motorbike"]  # the config's ids
    assert len(coco["images"]) > 0 and len(coco["annotations"]) == sum(per_label.values())
