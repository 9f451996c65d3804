"""The commands that run models restart once with glibc malloc settings, in place, and those settings make a freed
large block cheap to use again (``avala_infer/cli/allocator.py``). Real processes throughout: the restart is an
exec, and the settings only act from a process's start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from avala_infer.cli.allocator import SETTINGS, environment_for_models, on_glibc, runs_models

needs_glibc = pytest.mark.skipif(not on_glibc(), reason="the settings are glibc's")

# a thread allocates 128 MiB with malloc (as torch does for a large activation), touches it, frees it, three times,
# and reports the page faults of each round; then the process says what malloc settings it ran with, and its pid
PROBE = """
import ctypes, os, resource, sys, threading
from avala_infer.cli.allocator import restart_for_models
restart_for_models(sys.argv[1:])
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
faults = []
def rounds():
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        block = libc.malloc(128 << 20)
        ctypes.memset(block, 1, 128 << 20)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
thread = threading.Thread(target=rounds)
thread.start()
thread.join()
print(os.getpid(), os.environ.get("MALLOC_ARENA_MAX"), *faults)
"""


def clean_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS and k != "AVALA_INFER_MALLOC"}
    return {**env, **extra}


def run_probe(*args: str, **env: str) -> tuple[int, int, str, list[int]]:
    process = subprocess.Popen(
        [sys.executable, "-c", PROBE, *args], env=clean_environment(**env), stdout=subprocess.PIPE, text=True
    )
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    pid, arena_max, *faults = out.split()
    return process.pid, int(pid), arena_max, [int(f) for f in faults]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["label", "images/", "--model", "yolo11n"], True),
        (["-v", "label", "images/"], True),
        (["worker", "--home", "h"], True),
        (["serve", "--port", "0"], True),
        (["auto-label", "create", "--project", "p", "--run"], True),
        (["auto-label", "create", "--project", "p"], False),
        (["auto-label", "watch", "j"], False),
        (["projects", "list"], False),
        (["models", "show", "label"], False),
        (["--version"], False),
        ([], False),
    ],
)
def test_only_the_commands_that_run_models_restart(args, expected):
    assert runs_models(args) is expected


def test_the_settings_are_added_unless_the_user_chose_otherwise():
    base = {"PATH": "/usr/bin"}
    assert environment_for_models(base, glibc=True) == {**base, **SETTINGS}
    assert environment_for_models({**base, "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"}, glibc=True) is not None
    for users_choice in (
        {"AVALA_INFER_MALLOC": "system"},
        {"MALLOC_ARENA_MAX": "4"},
        {"MALLOC_TRIM_THRESHOLD_": "0"},
        {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"},
        {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
    ):
        assert environment_for_models({**base, **users_choice}, glibc=True) is None, users_choice
    assert environment_for_models(base, glibc=False) is None


@needs_glibc
def test_a_model_command_restarts_in_place_and_a_freed_block_then_costs_no_page_faults():
    popen_pid, pid, arena_max, faults = run_probe("label", "images/")
    assert pid == popen_pid  # exec: the same process, which whoever started it can still signal and wait for
    assert arena_max == SETTINGS["MALLOC_ARENA_MAX"]
    # the first round maps the block's pages (32,768 of 4 KiB; fewer where the kernel gives huge pages); later
    # rounds reuse them
    assert faults[0] > 0 and max(faults[1:]) <= faults[0] // 20, faults

    # without the restart (a command that runs no model, or the user's opt-out) every round faults them all again
    for args, env in ((("projects", "list"), {}), (("label", "images/"), {"AVALA_INFER_MALLOC": "system"})):
        popen_pid, pid, arena_max, faults = run_probe(*args, **env)
        assert pid == popen_pid and arena_max == "None"
        assert faults[0] > 0 and min(faults[1:]) >= faults[0] // 2, (args, env, faults)


@needs_glibc
def test_the_worker_command_runs_with_the_settings_and_still_stops_cleanly(tmp_path):
    """The console script's own path: ``python -m avala_infer.cli worker`` restarts with the settings (seen in the
    process's environment) and keeps its pid, so a SIGTERM sent to the pid its parent knows stops it cleanly."""
    process = subprocess.Popen(
        [sys.executable, "-m", "avala_infer.cli", "worker", "--home", str(tmp_path / "home"), "--poll", "0.05"],
        env=clean_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        environ = b""
        while b"MALLOC_ARENA_MAX=1\0" not in environ and time.monotonic() < deadline:
            time.sleep(0.05)
            environ = open(f"/proc/{process.pid}/environ", "rb").read()
        assert b"MALLOC_ARENA_MAX=1\0" in environ, "the worker did not restart with the malloc settings"
        for name, value in SETTINGS.items():
            assert f"{name}={value}\0".encode() in environ
        time.sleep(1.0)  # past its start-up: its own SIGTERM handler is in place
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        assert "ran 0 job(s)" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@needs_glibc
def test_the_console_script_restarts_before_it_imports_the_commands():
    """``python -m avala_infer.cli label ...`` execs itself before importing click, numpy or the commands: each
    process prints its own imports (``-X importtime``, kept by the restart), and only the restarted one imports
    them, so they are imported once, not twice (~0.1-0.3 s of every model command's start-up)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "avala_infer.cli", "label", "/nonexistent-folder", "--model", "m"],
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")]
    assert imported.count("avala_infer.cli") == 2  # two processes: the first, and the one it became
    assert imported.count("avala_infer.cli.app") == 1 and imported.count("click") == 1
    assert imported.count("numpy") == 1
