"""Pickled weights are code: loaded only from a model folder, after `models add`, or when trusted for the run;
a spec's sha256 pin is checked before anything loads. Nothing here is mocked: real pickles, real checkpoints,
the real CLI in a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from avala_infer import Engine
from avala_infer.cli import cli
from avala_infer.errors import ModelLoadError, ModelSpecError, UntrustedWeightsError, WeightsHashMismatchError
from avala_infer.specs import ModelSpec, find_spec
from avala_infer.types import ModelType
from tests.conftest import ASSETS, need


class RunsCode:
    """Unpickling this runs ``code`` (what any pickle may do)."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def code_checkpoint(path: Path, code: str) -> Path:
    """A checkpoint whose unpickling runs ``code``; saved by torch as a .pt is."""
    import torch

    torch.save({"model": RunsCode(code)}, path)
    return path


def marker_code(marker: Path) -> str:
    return f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')"


@pytest.fixture(autouse=True)
def user_data(tmp_path, monkeypatch) -> Path:
    """The user model folder under tmp_path (never the real ~/.local/share)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path / "data" / "avala-infer" / "models"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_pickle_from_elsewhere_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran.txt"
    evil = code_checkpoint(tmp_path / "evil.pt", marker_code(marker))
    with pytest.raises(UntrustedWeightsError) as refused:
        Engine(evil, device="cpu")
    message = str(refused.value)
    print(f"refusal: {message}")
    assert not marker.exists(), "the checkpoint's code ran although the load was refused"
    assert str(evil) in message and "runs any code" in message
    for way in ("AVALA_INFER_MODELS", "avala-infer models add", "--trust-weights", "trust_weights=True", "ONNX"):
        assert way in message, way
    # trusted for this run: the check passes and ultralytics unpickles it (the code runs; it is no model)
    with pytest.raises(ModelLoadError):
        Engine(evil, device="cpu", trust_weights=True)
    assert marker.read_text() == "ran"


def test_any_pickled_suffix_and_symlinks_into_a_model_folder_are_refused(tmp_path, monkeypatch):
    marker = tmp_path / "ran.txt"
    evil = code_checkpoint(tmp_path / "evil.pth", marker_code(marker))
    spec = ModelSpec(
        name="evil",
        model_type=ModelType.IMAGE_CLASSIFICATION,
        backend="torchvision",
        weights=str(evil),
        labels=("a", "b"),
        params={"architecture": "resnet18"},
    )
    with pytest.raises(UntrustedWeightsError, match="evil.pth"):
        Engine(spec, device="cpu")
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "evil.pt").symlink_to(evil)  # in a model folder by name, but the file lives elsewhere
    monkeypatch.setenv("AVALA_INFER_MODELS", str(folder))
    with pytest.raises(UntrustedWeightsError):
        Engine(folder / "evil.pt", device="cpu")
    assert not marker.exists()


@pytest.mark.assets
def test_a_real_checkpoint_copied_elsewhere_needs_trust(tmp_path, weights_pt):
    copy = shutil.copy(weights_pt, tmp_path / "mine.pt")
    with pytest.raises(UntrustedWeightsError):
        Engine(copy, device="cpu")
    engine = Engine(copy, device="cpu", trust_weights=True)
    (prediction,) = engine.predict(need(ASSETS / "images" / "ultralytics" / "bus.jpg"))
    names = list(prediction.detections.class_name)
    print(f"trusted for the run: {len(names)} boxes on bus.jpg: {names}")
    assert "bus" in names and names.count("person") >= 4


def test_autoinstall_is_off_while_a_checkpoint_loads(tmp_path):
    """ultralytics would `pip install` a module a checkpoint names; during our load its switch is off."""
    from ultralytics.utils import checks

    seen = tmp_path / "autoinstall.txt"
    code = f"import pathlib, ultralytics.utils.checks as c; pathlib.Path({str(seen)!r}).write_text(str(c.AUTOINSTALL))"
    before = checks.AUTOINSTALL
    with pytest.raises(ModelLoadError):
        Engine(code_checkpoint(tmp_path / "probe.pt", code), device="cpu", trust_weights=True)
    print(f"AUTOINSTALL during the load: {seen.read_text()}; before and after: {before} / {checks.AUTOINSTALL}")
    assert seen.read_text() == "False"
    assert checks.AUTOINSTALL == before

    # a checkpoint naming a module that is not installed: a load error, nothing installed
    module = tmp_path / "pkgs" / "avala_gone_module.py"
    module.parent.mkdir()
    module.write_text("def make():\n    return None\n")
    sys.path.insert(0, str(module.parent))
    try:
        import avala_gone_module
        import torch

        class NamesAModule:
            def __reduce__(self):
                return avala_gone_module.make, ()

        torch.save({"model": NamesAModule()}, tmp_path / "gone.pt")
    finally:
        sys.path.remove(str(module.parent))
        sys.modules.pop("avala_gone_module", None)
    with pytest.raises(ModelLoadError, match="avala_gone_module"):
        Engine(tmp_path / "gone.pt", device="cpu", trust_weights=True)


def _spec_yaml(path: Path, weights: Path, digest: str, backend: str) -> Path:
    path.write_text(
        f"name: pinned\nmodel_type: object_detection\nbackend: {backend}\nweights: {weights}\nsha256: {digest}\n"
    )
    return path


@pytest.mark.assets
def test_a_pinned_sha256_is_checked_before_loading(tmp_path, weights_pt, weights_onnx):
    right = sha256(weights_pt)
    wrong = hashlib.sha256(b"another file").hexdigest()
    with pytest.raises(WeightsHashMismatchError) as mismatch:
        Engine(_spec_yaml(tmp_path / "a.yaml", weights_pt, wrong, "ultralytics"), device="cpu")
    print(f"mismatch: {mismatch.value}")
    assert right in str(mismatch.value) and wrong in str(mismatch.value) and "a.yaml" in str(mismatch.value)
    engine = Engine(_spec_yaml(tmp_path / "b.yaml", weights_pt, right, "ultralytics"), device="cpu")
    assert len(engine.labels) == 80
    with pytest.raises(WeightsHashMismatchError):  # ONNX too
        Engine(_spec_yaml(tmp_path / "c.yaml", weights_onnx, wrong, "onnxruntime"), device="cpu")
    onnx = Engine(_spec_yaml(tmp_path / "d.yaml", weights_onnx, sha256(weights_onnx), "onnxruntime"), device="cpu")
    assert len(onnx.labels) == 80
    with pytest.raises(ModelSpecError, match="64 lower-case hex"):
        find_spec(_spec_yaml(tmp_path / "e.yaml", weights_onnx, "abc123", "onnxruntime"))


def _cli(*args: str, data_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(data_home.parent), "XDG_DATA_HOME": str(data_home), "YOLO_OFFLINE": "1"}
    command = [sys.executable, "-m", "avala_infer.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.assets
@pytest.mark.slow
def test_cli_label_refuses_then_models_add_trusts(tmp_path, weights_pt, user_data):
    bus = need(ASSETS / "images" / "ultralytics" / "bus.jpg")
    copy = Path(shutil.copy(weights_pt, tmp_path / "mine.pt"))
    data_home = tmp_path / "data"

    refused = _cli("label", str(bus), "-m", str(copy), "-o", str(tmp_path / "out1"), data_home=data_home)
    print(f"label, untrusted: exit {refused.returncode}: {refused.stderr.strip()[-300:]}")
    assert refused.returncode == 1
    assert "refusing to load" in refused.stderr and "--trust-weights" in refused.stderr
    assert not list((tmp_path / "out1").glob("*.jsonl"))

    args = ["label", str(bus), "-m", str(copy), "-o", str(tmp_path / "out2"), "-d", "cpu", "--trust-weights"]
    trusted = CliRunner().invoke(cli, args)  # the same command, in process, trusted for the run
    assert trusted.exit_code == 0, trusted.output

    added = _cli("models", "add", str(copy), data_home=data_home)
    assert added.returncode == 0, added.stderr
    print(f"models add: {added.stdout.strip()}")
    target = user_data / "mine.pt"
    assert target.is_file() and str(target) in added.stdout
    registry = json.loads((user_data / "trusted.json").read_text())
    assert registry["files"]["mine.pt"]["sha256"] == sha256(copy)

    labeled = _cli("label", str(bus), "-m", "mine.pt", "-o", str(tmp_path / "out3"), "-d", "cpu", data_home=data_home)
    assert labeled.returncode == 0, labeled.stderr
    assert "1/1 items labeled" in labeled.stderr

    assert Engine("mine.pt", device="cpu").labels[5] == "bus"  # in-process too, by file name

    with open(target, "ab") as changed:  # the file changed after it was added: refused, not loaded
        changed.write(b"\0")
    with pytest.raises(WeightsHashMismatchError, match="changed since"):
        Engine(target, device="cpu")


def test_models_add_keeps_a_different_file_of_the_same_name(tmp_path, user_data):
    from avala_infer.errors import ConfigError
    from avala_infer.trust import add_weights

    first, second = tmp_path / "a" / "w.onnx", tmp_path / "b" / "w.onnx"
    for path, content in ((first, b"first"), (second, b"second")):
        path.parent.mkdir()
        path.write_bytes(content)
    target, digest = add_weights(first)
    assert target == user_data / "w.onnx" and digest == sha256(first)
    with pytest.raises(ConfigError, match="--force"):
        add_weights(second)
    assert target.read_bytes() == b"first"
    assert add_weights(second, force=True) == (target, sha256(second))
    assert target.read_bytes() == b"second"
    assert json.loads((user_data / "trusted.json").read_text())["files"]["w.onnx"]["sha256"] == sha256(second)
