"""What the side-by-side benchmarks share: where the assets are, progress lines, and the machine they ran on.

The benchmarks run as scripts (``python benchmarks/bench_*.py``), so this module is imported from their folder.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def assets_dir() -> Path:
    return Path(os.environ.get("AVALA_INFER_ASSETS", REPO_ROOT.parent / "shared" / "assets"))


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def malloc_settings() -> str:
    """glibc malloc as this process was started: the CLI's settings (``avala_infer.cli.allocator``, which the
    ``avala-infer`` commands that run models restart with), other settings, or glibc's defaults. They change the
    host-side figures (page faults of large buffers), so every report says which it ran with."""
    from avala_infer.cli.allocator import SETTINGS

    present = {name: os.environ[name] for name in SETTINGS if name in os.environ}
    if present == SETTINGS:
        return "the CLI's settings"
    return ", ".join(f"{k}={v}" for k, v in present.items()) or "glibc's defaults"


def machine_info(*packages: str) -> dict[str, Any]:
    """CPU, cores, platform, Python, torch and each of ``packages`` with its version, and the GPU when present."""
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "malloc": malloc_settings(),
    }
    for package in packages:
        info[package] = importlib.import_module(package).__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
