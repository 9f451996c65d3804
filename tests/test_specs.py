"""Model specs: reading, validation, and where weights are looked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from avala_infer.cli import cli
from avala_infer.errors import ModelSpecError, UnknownModelError, WeightsNotFoundError
from avala_infer.specs import find_spec, load_spec, resolve_weights


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_bundled_specs_load(weights_pt):
    spec = find_spec("yolo11n")
    assert spec.backend == "ultralytics" and spec.model_type.value == "object_detection"
    assert resolve_weights(spec) == weights_pt.resolve()
    assert find_spec("yolo11n-onnx").backend == "onnxruntime"


def test_spec_errors_name_the_file_and_the_problem(tmp_path):
    missing = _write(tmp_path / "a.yaml", "name: a\nmodel_type: object_detection\n")
    with pytest.raises(ModelSpecError, match=r"a\.yaml lacks required field\(s\): backend, weights"):
        load_spec(missing)
    typo = _write(tmp_path / "b.yaml", "name: b\nmodel_type: object_detection\nbackend: x\nweights: w.pt\nbatch: 4\n")
    with pytest.raises(ModelSpecError, match=r"unknown field\(s\) \['batch'\]"):
        load_spec(typo)
    bad_type = _write(tmp_path / "c.yaml", "name: c\nmodel_type: detector\nbackend: x\nweights: w.pt\n")
    with pytest.raises(ModelSpecError, match="valid model types"):
        load_spec(bad_type)
    with pytest.raises(ModelSpecError, match="cannot read"):
        load_spec(_write(tmp_path / "d.yaml", "name: [unclosed\n"))


def test_labels_from_a_file_next_to_the_spec(tmp_path):
    _write(tmp_path / "names.txt", "cat\ndog\n\n")
    spec = load_spec(
        _write(
            tmp_path / "s.yaml",
            "name: s\nmodel_type: object_detection\nbackend: onnxruntime\nweights: w.onnx\nlabels: names.txt\n",
        )
    )
    assert spec.labels == ("cat", "dog")


def test_weights_resolve_explicit_then_env_then_user_dir(tmp_path, monkeypatch):
    env_dir, data_home = tmp_path / "env", tmp_path / "data"
    user_dir = data_home / "avala-infer" / "models"
    env_dir.mkdir()
    user_dir.mkdir(parents=True)
    monkeypatch.setenv("AVALA_INFER_MODELS", str(env_dir))
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    spec = load_spec(
        _write(tmp_path / "m.yaml", "name: m\nmodel_type: object_detection\nbackend: onnxruntime\nweights: m.onnx\n")
    )
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(spec)
    assert "AVALA_INFER_MODELS" in str(info.value) and str(user_dir) in str(info.value)
    (user_dir / "m.onnx").write_bytes(b"user")
    assert resolve_weights(spec) == user_dir / "m.onnx"
    (env_dir / "m.onnx").write_bytes(b"env")
    assert resolve_weights(spec) == env_dir / "m.onnx"
    explicit = tmp_path / "explicit" / "m.onnx"
    explicit.parent.mkdir()
    explicit.write_bytes(b"explicit")
    assert resolve_weights(spec.with_overrides(weights=str(explicit))) == explicit


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModelError, match="Known model names: .*yolo11n"):
        find_spec("yolo99")
    with pytest.raises(UnknownModelError, match="no file at"):
        find_spec("/nowhere/model.pt")


def test_specs_from_env_folder_override_and_models_cli(tmp_path, monkeypatch, weights_pt):
    _write(
        tmp_path / "mine.yaml",
        "name: mine\nmodel_type: object_detection\nbackend: ultralytics\nweights: not-there.pt\n",
    )
    monkeypatch.setenv("AVALA_INFER_SPECS", str(tmp_path))
    runner = CliRunner()
    listed = runner.invoke(cli, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    lines = {line.split()[0]: line for line in listed.output.splitlines()[1:]}
    assert "missing (not-there.pt)" in lines["mine"]
    assert str(weights_pt.resolve()) in lines["yolo11n"]
    shown = runner.invoke(cli, ["models", "show", "mine"])
    assert shown.exit_code == 0 and "MISSING" in shown.output and "AVALA_INFER_MODELS" in shown.output
    assert runner.invoke(cli, ["models", "show", "nope"]).exit_code == 1


def test_one_broken_spec_breaks_only_itself(tmp_path, monkeypatch):
    folder = tmp_path / "specs"
    folder.mkdir()
    _write(folder / "good.yaml", "name: good\nmodel_type: object_detection\nbackend: onnxruntime\nweights: good.onnx\n")
    _write(folder / "mine.yaml", "name: broken\nmodel_type: object_detection\nbackend: onnxruntime\nbatch: 4\n")
    _write(folder / "garbled.yml", "name: [unclosed\n")
    monkeypatch.setenv("AVALA_INFER_SPECS", str(folder))

    assert find_spec("good").weights == "good.onnx"
    assert find_spec("yolo11n").backend == "ultralytics"  # the shipped specs still resolve
    for asked in ("broken", "mine"):  # by its name: and by its file name
        with pytest.raises(ModelSpecError, match=r"mine\.yaml lacks required field\(s\): weights"):
            find_spec(asked)
    with pytest.raises(ModelSpecError, match=r"garbled\.yml"):
        find_spec("garbled")  # unreadable YAML: by its file name

    runner = CliRunner()
    listed = runner.invoke(cli, ["models", "list"])
    print(listed.output)
    assert listed.exit_code == 0, listed.output
    lines = {line.split()[0]: line for line in listed.output.splitlines()[1:]}
    assert "missing (good.onnx)" in lines["good"]
    assert "BROKEN SPEC" in lines["broken"] and "lacks required field(s): weights" in lines["broken"]
    assert "BROKEN SPEC" in lines["garbled"] and "cannot read model spec" in lines["garbled"]
    assert "yolo11n" in lines
    as_json = runner.invoke(cli, ["models", "list", "--json"])
    assert as_json.exit_code == 0, as_json.output
    rows = {row["name"]: row for row in json.loads(as_json.output)}
    assert rows["good"]["problem"] is None and rows["good"]["backend"] == "onnxruntime"
    assert "lacks required field(s): weights" in rows["broken"]["problem"]
    assert rows["broken"]["spec"] == str(folder / "mine.yaml") and rows["broken"]["model_type"] is None
    assert rows["garbled"]["problem"].startswith("cannot read model spec")


def test_spec_folders_are_only_the_documented_ones(tmp_path, monkeypatch):
    import avala_infer.specs as specs_module

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("AVALA_INFER_SPECS", raising=False)
    package = Path(specs_module.__file__).resolve().parent
    folders = specs_module.spec_dirs()
    assert folders == [package / "_bundled_models", package.parent / "models", tmp_path / "config/avala-infer/models"]

    # installed from a wheel: the package's parent is site-packages, whose models/ is someone else's
    site = tmp_path / "site-packages"
    (site / "avala_infer").mkdir(parents=True)
    (site / "models").mkdir()
    _write(site / "models" / "theirs.yaml", "not: a spec\n")
    monkeypatch.setattr(specs_module, "__file__", str(site / "avala_infer" / "specs.py"))
    assert site / "models" not in specs_module.spec_dirs()
    _write(site / "pyproject.toml", '[project]\nname = "someone-else"\n')
    assert site / "models" not in specs_module.spec_dirs()
    _write(site / "pyproject.toml", '[project]\nname = "avala-infer"\n')  # a source checkout of ours
    assert site / "models" in specs_module.spec_dirs()
