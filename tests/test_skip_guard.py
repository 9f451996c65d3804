"""Under CI=true a skipped test fails the session (tests/skip_guard.py), except a skip for want of a CUDA GPU:
a missing asset can never turn into a green run. Checked with real pytest sessions in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.skip_guard import NO_GPU_REASON


def _session(tmp_path, body: str, ci: str | None) -> subprocess.CompletedProcess:
    test_file = tmp_path / "test_sample.py"
    test_file.write_text("import pytest\n\n" + body)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.skip_guard", "-q", "--rootdir", str(tmp_path),
         "-c", os.devnull, "-p", "no:cacheprovider", str(test_file)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


MISSING_ASSET = "def test_a():\n    pytest.skip('test asset missing: /nowhere')\n\ndef test_b():\n    pass\n"


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_skip_fails_the_session_under_ci(tmp_path, ci):
    result = _session(tmp_path, MISSING_ASSET, ci)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "test_sample.py::test_a: test asset missing: /nowhere" in result.stdout
    assert "1 passed, 1 skipped" in result.stdout


def test_a_skip_is_only_a_skip_outside_ci(tmp_path):
    result = _session(tmp_path, MISSING_ASSET, None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 1 skipped" in result.stdout


def test_no_gpu_skips_are_allowed_under_ci(tmp_path):
    body = f"@pytest.mark.skipif(True, reason={NO_GPU_REASON!r})\ndef test_gpu():\n    pass\n\n"
    body += "def test_b():\n    pass\n"
    result = _session(tmp_path, body, "true")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 1 skipped" in result.stdout
