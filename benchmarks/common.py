"""What the side-by-side benchmarks share: where the assets are, progress lines, and the machine they ran on.

The benchmarks run as scripts (``python benchmarks/bench_*.py``), so this module is imported from their folder.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import sys
import time
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


# the stages each prediction's timings name, in the order an item meets them (read and decode on the loader
# threads; preprocess: the letterbox or the tokenizer; collate, forward, postprocess: a batch's, shared by its
# items; filter)
STAGES = ("read", "decode", "preprocess", "collate", "forward", "postprocess", "filter")


class StageTimes:
    """Each stage's time summed over a pass's predictions (ms), and the pass's wall time (``wall``, ms) once
    :meth:`stop` is called; made when the pass starts."""

    def __init__(self) -> None:
        self.totals = dict.fromkeys(STAGES, 0.0)
        self._t0 = time.perf_counter()

    def add(self, prediction: Any) -> None:
        for stage, ms in prediction.timings.items():
            if stage in self.totals:
                self.totals[stage] += ms

    def stop(self) -> float:
        """The pass's wall time in seconds (kept in ms as ``totals["wall"]``)."""
        elapsed = time.perf_counter() - self._t0
        self.totals["wall"] = elapsed * 1e3
        return elapsed


def stage_report(stages: dict[str, float], items: int) -> str:
    """Each stage's time per item and its busy share of the wall time: a stage on one thread near 1.0 is what
    holds the run back (the loaders' stages run on several threads, so they can pass 1.0)."""
    wall = stages["wall"]
    return ", ".join(
        f"{stage} {stages[stage] / items:.3f} ms ({stages[stage] / wall:.2f})" for stage in STAGES if stages[stage]
    )
