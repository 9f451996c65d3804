"""The layer contract (``[tool.importlinter]`` in pyproject.toml) holds, and it would catch a wrong import.

The contract is the layer list of ../shared/docs/DESIGN.md: cli <- server <- client <- projects/jobs/labeling <-
agents <- store <- exporters <- engine <- filters <- registry <- predictors <- pull/trust <- specs <- annotations <-
url_policy <- types <- errors, plus the nevers (the engine knows no store, predictors write nothing, the store
knows no models, exporters read no files through the engine, no predictor family imports another, only cli/
imports click, only server/ imports the web framework).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    """Run import-linter's CLI with the pyproject.toml in ``cwd`` over the package found first on ``pythonpath``."""
    pytest.importorskip("importlinter", reason="import-linter is a test extra: pip install -e '.[test]'")
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    script = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", script, "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_layer_contract_is_kept():
    done = lint_imports(ROOT, ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 broken" in done.stdout, done.stdout
    assert "BROKEN" not in done.stdout


WRONG_IMPORTS = {
    # a file of the package -> the line added to it -> the contract that must break
    "engine/batching.py": ("import avala_infer.store", "The engine imports no store, jobs, client or CLI"),
    "store/db.py": ("import avala_infer.engine", "The store imports no engine, predictors, exporters or models"),
    "exporters/base.py": ("import click", "Nothing but cli/ imports click"),
    "annotations/detections.py": ("import avala_infer.filters", "Layers: each imports only the layers below it"),
    "exporters/preview.py": (
        "import avala_infer.engine.loaders",
        "Exporters take predictions: they import no engine, predictors or store",
    ),
    "predictors/classification/torchvision.py": (
        "import avala_infer.predictors.detection.ultralytics",
        "No predictor family imports another",
    ),
    # the server's place: only server/ imports the web framework (the CLI's `serve` reaches it only through the
    # server package), and the client below it never imports the server
    "client/resources.py": ("import fastapi", "Only server/ imports the web framework"),
    "cli/serve.py": ("import uvicorn", "Only server/ imports the web framework"),
    "store/items.py": ("import starlette", "Only server/ imports the web framework"),
    "client/account.py": ("import avala_infer.server.pages", "Layers: each imports only the layers below it"),
    "server/pages.py": ("import click", "Nothing but cli/ imports click"),
}


@pytest.mark.parametrize("module", sorted(WRONG_IMPORTS))
def test_a_wrong_import_breaks_the_contract(tmp_path, module):
    """A copy of the package with one import that the design forbids fails the check, naming the contract."""
    shutil.copytree(ROOT / "avala_infer", tmp_path / "avala_infer", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    line, contract = WRONG_IMPORTS[module]
    target = tmp_path / "avala_infer" / module
    target.write_text(target.read_text() + f"\n{line}  # a wrong import, on purpose\n")

    done = lint_imports(tmp_path, tmp_path)

    assert done.returncode != 0, done.stdout
    assert f"{contract} BROKEN" in done.stdout, done.stdout
    assert "avala_infer." + module.removesuffix(".py").replace("/", ".") in done.stdout
