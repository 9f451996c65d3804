"""Whole-process benchmark: ``avala-infer label`` against a fresh Python process running the ultralytics predict
loop, as a user meets them from a shell, each tool at its own defaults.

- **ours**: ``avala-infer label FOLDER --model WEIGHTS --format yolo --out TMP`` (the CLI's default device,
  batch size, streams and threads). The weights' folder is the models folder (``AVALA_INFER_MODELS``), which is
  how a ``.pt`` is trusted without ``--trust-weights`` (README, "Pickled weights are code").
- **ultralytics**: ``python -c "from ultralytics import YOLO; [None for _ in YOLO(w).predict(FOLDER, stream=True,
  save_txt=True, project=TMP, verbose=False)]"``: its defaults (batch 1, the checkpoint's image size, its own
  thread count), YOLO txt files out like ours.

Both run with ``YOLO_OFFLINE=1``. Rounds alternate ours / ultralytics; the median over rounds is reported. The
rate is images / wall seconds of the whole process, start-up (imports, model load) included: unlike
``bench_detection.py``'s in-process figure, which times the loop alone in one warm process. Start-up is the wall
time of the same command on a folder of one image.

    python benchmarks/bench_process.py --quick                   # smoke run, under a minute
    python benchmarks/bench_process.py                           # yolo11n.pt and yolo11n.onnx, coco128 val2017
    python benchmarks/bench_process.py --weights ../shared/assets/models/yolo11n.onnx --rounds 5 --json x.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")  # before machine_info imports ultralytics

from common import assets_dir, machine_info, progress  # noqa: E402  (benchmarks/ is on sys.path)

REFERENCE_SCRIPT = (
    "import sys; from ultralytics import YOLO; "
    "[None for _ in YOLO(sys.argv[1]).predict(sys.argv[2], stream=True, save_txt=True, project=sys.argv[3], "
    "verbose=False)]"
)


def avala_infer_command() -> list[str]:
    """The CLI of this checkout's environment: ``avala-infer`` beside this Python, else ``python -m``."""
    script = Path(sys.executable).with_name("avala-infer")
    return [str(script)] if script.exists() else [sys.executable, "-m", "avala_infer.cli"]


def ours_command(weights: Path, folder: Path, out: Path) -> list[str]:
    return [
        *avala_infer_command(),
        "label",
        str(folder),
        "--model",
        str(weights),
        "--format",
        "yolo",
        "--out",
        str(out),
    ]


def reference_command(weights: Path, folder: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", REFERENCE_SCRIPT, str(weights), str(folder), str(out)]


def process_env(weights: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["YOLO_OFFLINE"] = "1"
    env["AVALA_INFER_MODELS"] = str(weights.resolve().parent)
    return env


def wall_seconds(command: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall seconds of one process, from spawn to exit; a failure stops the benchmark with its output."""
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return elapsed


def timed_process(command: list[str], env: dict[str, str], scratch: Path) -> tuple[float, int]:
    """Wall seconds of one process (:func:`wall_seconds`) and the label files it wrote."""
    out = Path(command[command.index("--out") + 1]) if "--out" in command else Path(command[-1])
    shutil.rmtree(out, ignore_errors=True)
    elapsed = wall_seconds(command, env, scratch)
    files = sum(1 for _ in out.rglob("*.txt"))
    shutil.rmtree(out, ignore_errors=True)
    return elapsed, files


def staged(images: Path, limit: int | None, folder: Path) -> int:
    """Symlinks to the first ``limit`` images of ``images`` in ``folder`` (both tools read it as-is)."""
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    if not files:
        raise SystemExit(f"no images under {images}")
    folder.mkdir(parents=True)
    for file in files[:limit] if limit else files:
        (folder / file.name).symlink_to(file.resolve())
    return len(files[:limit] if limit else files)


def bench_weights(weights: Path, images: Path, rounds: int, limit: int | None, scratch: Path) -> dict[str, Any]:
    env = process_env(weights)
    tag = weights.stem + weights.suffix.replace(".", "_")
    folder, single = scratch / f"{tag}_images", scratch / f"{tag}_one"
    count = staged(images, limit, folder)
    staged(images, 1, single)
    tools: dict[str, Callable[[Path, Path], list[str]]] = {
        "avala-infer": lambda src, out: ours_command(weights, src, out),
        "ultralytics": lambda src, out: reference_command(weights, src, out),
    }
    walls: dict[str, list[float]] = {name: [] for name in tools}
    startups: dict[str, list[float]] = {name: [] for name in tools}
    files: dict[str, int] = {}
    for r in range(rounds):
        for name, command in tools.items():  # alternating: ours, then ultralytics, round after round
            out = scratch / f"{tag}_{name}_out"
            startups[name].append(timed_process(command(single, out), env, scratch)[0])
            wall, files[name] = timed_process(command(folder, out), env, scratch)
            walls[name].append(wall)
            progress(
                f"  {weights.name} round {r + 1}/{rounds} {name}: {count / walls[name][-1]:.2f} img/s "
                f"({walls[name][-1]:.1f} s), start-up {startups[name][-1]:.1f} s"
            )
    result: dict[str, Any] = {"weights": str(weights), "images": count, "rounds": rounds, "tools": {}}
    for name in tools:
        wall, startup = statistics.median(walls[name]), statistics.median(startups[name])
        result["tools"][name] = {
            "label_files": files[name],  # .txt files written (ultralytics writes none for an image without boxes)
            "walls_s": walls[name],
            "startups_s": startups[name],
            "median_wall_s": wall,
            "median_startup_s": startup,
            "img_per_s": count / wall,
            # the rate once started: what a longer run tends to
            "img_per_s_after_startup": (count - 1) / (wall - startup) if wall > startup else None,
        }
    ours, ref = result["tools"]["avala-infer"], result["tools"]["ultralytics"]
    result["ratio"] = ours["img_per_s"] / ref["img_per_s"]
    if ours["img_per_s_after_startup"] and ref["img_per_s_after_startup"]:
        result["ratio_after_startup"] = ours["img_per_s_after_startup"] / ref["img_per_s_after_startup"]
    return result


def report(result: dict[str, Any], write: Callable[[str], None] = print) -> None:
    write(f"# whole processes, {result['when']} ({result['machine']['cpu']}, {result['machine']['cores']} cores)")
    write("img/s = images / wall seconds of the whole process (start-up included); start-up = a run on 1 image")
    write(f"{'weights':14} {'tool':12} {'images':>6} {'img/s':>7} {'wall s':>7} {'start s':>7} {'after start':>11}")
    for run in result["runs"]:
        for name, tool in run["tools"].items():
            after = tool["img_per_s_after_startup"]
            write(
                f"{Path(run['weights']).name:14} {name:12} {run['images']:6d} {tool['img_per_s']:7.2f} "
                f"{tool['median_wall_s']:7.1f} {tool['median_startup_s']:7.1f} "
                f"{(f'{after:.2f}' if after else '-'):>11}"
            )
    for run in result["runs"]:
        extra = f" (after start-up {run['ratio_after_startup']:.2f}x)" if "ratio_after_startup" in run else ""
        write(f"ratio ours/ultralytics {Path(run['weights']).name}, whole process: {run['ratio']:.2f}x{extra}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    models = assets_dir() / "models"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--weights",
        type=Path,
        action="append",
        default=None,
        help="repeatable; default yolo11n.pt and yolo11n.onnx from $AVALA_INFER_ASSETS/models",
    )
    parser.add_argument("--images", type=Path, default=assets_dir() / "data" / "coco128" / "images" / "val2017")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--quick", action="store_true", help="smoke run: yolo11n.pt, 8 images, 1 round")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.limit = 1, args.limit or 8
        args.weights = args.weights or [models / "yolo11n.pt"]
    args.weights = args.weights or [models / "yolo11n.pt", models / "yolo11n.onnx"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result: dict[str, Any] = {
        "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info("ultralytics"),
        "commands": {
            "ours": " ".join(ours_command(Path("WEIGHTS"), Path("FOLDER"), Path("TMP"))),
            "ultralytics": f"python -c {REFERENCE_SCRIPT!r} WEIGHTS FOLDER TMP",
        },
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench_process_") as tmp:
        for weights in args.weights:
            progress(f"{weights.name}: {max(1, args.rounds)} rounds")
            result["runs"].append(bench_weights(weights, args.images, max(1, args.rounds), args.limit, Path(tmp)))
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        progress(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
