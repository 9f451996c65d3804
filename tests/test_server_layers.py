"""The server's place in the layer contract: only ``avala_infer.server`` imports the web framework (the CLI's
``serve`` reaches it only through the server package), and the client below it never imports the server."""

from __future__ import annotations

import shutil

import pytest

from tests.test_layers import ROOT, lint_imports

WRONG_IMPORTS = {
    "client/resources.py": ("import fastapi", "Only server/ imports the web framework"),
    "cli/serve.py": ("import uvicorn", "Only server/ imports the web framework"),
    "store/items.py": ("import starlette", "Only server/ imports the web framework"),
    "client/account.py": ("import avala_infer.server.pages", "Layers: each imports only the layers below it"),
    "server/pages.py": ("import click", "Nothing but cli/ imports click"),
}


@pytest.mark.parametrize("module", sorted(WRONG_IMPORTS))
def test_a_wrong_server_import_breaks_the_contract(tmp_path, module):
    shutil.copytree(ROOT / "avala_infer", tmp_path / "avala_infer", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    line, contract = WRONG_IMPORTS[module]
    target = tmp_path / "avala_infer" / module
    target.write_text(target.read_text() + f"\n{line}  # a wrong import, on purpose\n")

    done = lint_imports(tmp_path, tmp_path)

    assert done.returncode != 0, done.stdout
    assert f"{contract} BROKEN" in done.stdout, done.stdout
