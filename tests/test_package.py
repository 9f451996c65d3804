"""Import hygiene, model types and the registry."""

from __future__ import annotations

import subprocess
import sys

import pytest

from avala_infer import registry
from avala_infer.errors import ConfigError
from avala_infer.types import ModelType


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_import_and_cli_help_import_no_torch():
    assert "torch" not in _modules_after("import avala_infer")
    modules = _modules_after(
        "import sys\nfrom click.testing import CliRunner\nfrom avala_infer.cli import cli\n"
        "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(cli, ['label', '--help']); assert r.exit_code == 0, r.output"
    )
    assert "torch" not in modules and "ultralytics" not in modules and "onnxruntime" not in modules


def test_the_six_avala_model_types():
    assert [m.value for m in ModelType] == [
        "object_detection",
        "instance_segmentation",
        "semantic_segmentation",
        "image_classification",
        "text_classification",
        "named_entity_recognition",
    ]
    assert ModelType.parse("Object_Detection") is ModelType.OBJECT_DETECTION
    with pytest.raises(ConfigError, match="valid model types: object_detection"):
        ModelType.parse("detector")


def test_registry_refuses_duplicates_and_explains_unknown_pairs():
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("object_detection", "ultralytics", "x.y:Z")
    with pytest.raises(ConfigError, match="registered pairs: .*object_detection/onnxruntime"):
        registry.get_predictor_class("object_detection", "tensorrt")
    assert (ModelType.OBJECT_DETECTION, "onnxruntime") in registry.registered()


def test_registry_imports_backends_lazily():
    modules = _modules_after("from avala_infer import registry; registry.registered()")
    assert "avala_infer.predictors.detection.ultralytics" not in modules and "torch" not in modules
