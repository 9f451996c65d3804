"""Under CI a skipped test is a failure, unless it skipped for want of a CUDA GPU (CI has none).

A missing asset, package or browser turns into a skip on a developer's machine; under ``CI=true`` the session
fails and lists each such skip, so a green CI run always means every test that can run here ran.
Loaded by ``tests/conftest.py`` (``pytest_plugins``).
"""

from __future__ import annotations

import os

import pytest

# The one skip reason allowed under CI: tests/test_cuda.py skips with it where torch sees no GPU.
NO_GPU_REASON = "needs a CUDA GPU"

_skips: list[tuple[str, str]] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _reason(report)
        if NO_GPU_REASON not in reason:
            _skips.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not in_ci() or not _skips:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", f"CI=true: {len(_skips)} test(s) skipped for a reason other than no CUDA GPU", red=True)
        for nodeid, reason in _skips:
            reporter.write_line(f"{nodeid}: {reason}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
