"""Side-by-side detection benchmark: avala-infer's ``Engine`` against the ultralytics predict loop.

Same weights, same images, one process. One untimed warm-up pass per side, then rounds that alternate
ultralytics (at each of its batch sizes) and ours; the median images/s over rounds is reported for each, and
ours is compared with ultralytics at its best batch size. Two ceilings put our end-to-end figure in context:
decode-only (our loader pool reading and decoding every image, no model) and model-only (our predictor's
forward on pre-collated batches of already-prepared images).

    python benchmarks/bench_detection.py --rounds 1 --limit 16          # smoke check
    python benchmarks/bench_detection.py                                # yolo11n.pt on coco128 val2017
    python benchmarks/bench_detection.py --weights ../shared/assets/models/yolo11n.onnx --json onnx.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported (our .pt backend imports it too)

from common import StageTimes, assets_dir, machine_info, progress, stage_report  # noqa: E402  (benchmarks/ is on sys.path)

CONFIDENCE = 0.25
IOU = 0.7
BOX_TOLERANCE = 0.05  # ours vs ultralytics at batch 1: a larger relative difference in box count is flagged


@dataclasses.dataclass
class Series:
    """The timed runs of one tool at one batch size."""

    tool: str
    batch: int
    threads: int = 0
    rates: list[float] = dataclasses.field(default_factory=list)
    images: int = 0
    boxes: int = 0
    errors: int = 0

    def add(self, rate: float, images: int, boxes: int = 0, errors: int = 0) -> None:
        self.rates.append(rate)
        self.images, self.boxes, self.errors = images, boxes, errors

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    def summary(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "median": self.median,
            "min": min(self.rates),
            "max": max(self.rates),
        }


# --------------------------------------------------------------------------------------------- arguments


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def int_list(text: str) -> list[int]:
    try:
        values = [positive_int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError("expected at least one batch size")
    return list(dict.fromkeys(values))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    assets = assets_dir()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=assets / "models" / "yolo11n.pt", help=".pt or .onnx")
    parser.add_argument("--images", type=Path, default=assets / "data" / "coco128" / "images" / "val2017")
    parser.add_argument("--device", default="auto", help="auto (cuda when torch sees a GPU), cpu, cuda or cuda:N")
    parser.add_argument("--rounds", type=positive_int, default=3, help="timed rounds per tool (default 3)")
    parser.add_argument("--ours-batch", type=positive_int, default=None, help="default 8 on cpu, 32 on cuda")
    parser.add_argument(
        "--ref-batches", type=int_list, default=None, help='ultralytics batch sizes, default "1,8" cpu, "1,8,32" cuda'
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="our loader threads (default: the engine's: min(8, cores) on a CPU, cores - 2 up to 32 on a GPU)",
    )
    parser.add_argument("--limit", type=positive_int, default=None, help="use only the first N images")
    parser.add_argument("--ref-half", action="store_true", help="run ultralytics in fp16 (its default is fp32)")
    parser.add_argument(
        "--ref-threads", type=positive_int, default=None, help="torch threads for ultralytics (default: its own choice)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def resolve_device(device: str) -> str:
    import torch

    if device.strip().lower() == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# --------------------------------------------------------------------------------------------- inputs


@contextlib.contextmanager
def staged_folder(images: Path, limit: int | None) -> Iterator[tuple[Path, int]]:
    """A folder both tools read as-is, and its image count.

    The folder itself when it holds all the images at its top level; otherwise (``--limit``, or images in
    subfolders, which ultralytics does not walk) a temporary folder of symlinks to the chosen images.
    """
    from avala_infer.engine.sources import iter_items

    files = [Path(item.source) for item in iter_items(str(images)) if item.error is None]
    if not files:
        raise SystemExit(f"no images found under {images}")
    chosen = files[:limit] if limit else files
    if len(chosen) == len(files) and all(f.parent == images for f in files):
        yield images, len(files)
        return
    with tempfile.TemporaryDirectory(prefix="bench_detection_") as tmp:
        for i, file in enumerate(chosen):
            (Path(tmp) / f"{i:06d}_{file.name}").symlink_to(file.resolve())
        yield Path(tmp), len(chosen)


# --------------------------------------------------------------------------------------------- timed runs


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_reference(model: Any, folder: Path, batch: int, device: str, half: bool, imgsz: int) -> tuple[float, int, int]:
    """(images/s, images, boxes) for one pass of ultralytics' own predict loop over the folder.

    ``imgsz`` is explicit: a ``.pt`` remembers its training size and ultralytics would predict at that.
    """
    options: dict[str, Any] = {"half": True} if half else {}  # only when asked: newer ultralytics deprecates it
    gc.collect()
    images = boxes = 0
    t0 = time.perf_counter()
    results = model.predict(
        str(folder),
        stream=True,
        verbose=False,
        batch=batch,
        device=device,
        conf=CONFIDENCE,
        iou=IOU,
        imgsz=imgsz,
        **options,
    )
    for result in results:
        images += 1
        boxes += len(result.boxes)
    elapsed = time.perf_counter() - t0
    return images / elapsed, images, boxes


def run_ours(engine: Any, folder: Path, stages: dict[str, float] | None = None) -> tuple[float, int, int, int]:
    """(images/s, images, boxes, failed items) for one pass of ``Engine.predict`` over the folder; ``stages``, when
    given, gets each stage's time summed over the images (ms) and the pass's wall time (``wall``, ms)."""
    gc.collect()
    images = boxes = errors = 0
    totals = StageTimes()
    for prediction in engine.predict(str(folder), confidence_threshold=CONFIDENCE, iou_threshold=IOU):
        images += 1
        boxes += len(prediction.detections)
        errors += prediction.error is not None
        totals.add(prediction)
    elapsed = totals.stop()
    if stages is not None:
        stages.update(totals.totals)
    return images / elapsed, images, boxes, errors


def run_decode(folder: Path, workers: int, depth: int) -> tuple[float, int]:
    """(images/s, images) for our loader pool reading and decoding every image, with no model."""
    from avala_infer.engine.loaders import prefetch, read_image
    from avala_infer.engine.sources import iter_items

    gc.collect()
    t0 = time.perf_counter()
    images = sum(1 for _ in prefetch(iter_items(str(folder)), lambda item: read_image(item, {}), workers, depth))
    return images / (time.perf_counter() - t0), images


def collate_batches(engine: Any, folder: Path, batch_size: int) -> list[tuple[Hashable, Any, int]]:
    """Every image decoded, prepared, grouped by ``batch_key`` and collated: (key, batch input, images)."""
    import torch

    from avala_infer.engine.loaders import read_image
    from avala_infer.engine.sources import iter_items

    predictor = engine.predictor
    groups: dict[Hashable, list[Any]] = {}
    for item in iter_items(str(folder)):
        prepared = predictor.prepare(read_image(item, {}))
        groups.setdefault(predictor.batch_key(prepared), []).append(prepared)
    batches = []
    with torch.inference_mode():
        for key, group in groups.items():
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                batches.append((key, predictor.collate(chunk), len(chunk)))
    return batches


def run_forward(engine: Any, batches: list[tuple[Hashable, Any, int]], device: str) -> tuple[float, int]:
    """(images/s, images) for our predictor's forward alone over pre-collated batches, run as the engine runs
    them: ``engine.streams`` batches side by side, ``engine.cpu_threads`` torch threads each."""
    import torch

    from avala_infer.engine.batching import ConcurrentRunner
    from avala_infer.engine.pipeline import torch_threads

    def forward(batch: Any) -> None:
        with torch.inference_mode():  # thread-local: entered on the stream's own thread
            engine.predictor.forward(batch)

    gc.collect()
    runner = ConcurrentRunner(forward, engine.streams)
    try:
        with torch_threads(engine.cpu_threads):
            synchronize(device)
            t0 = time.perf_counter()
            for _, batch, _ in batches:
                runner.submit(batch)
            runner.drain()
            synchronize(device)
            elapsed = time.perf_counter() - t0
    finally:
        runner.close()
    images = sum(n for _, _, n in batches)
    return images / elapsed, images


def warm_forward(engine: Any, batches: list[tuple[Hashable, Any, int]], device: str) -> None:
    """One untimed forward per distinct input shape."""
    firsts = {key: (key, batch, n) for key, batch, n in reversed(batches)}
    run_forward(engine, list(firsts.values()), device)


# --------------------------------------------------------------------------------------------- the benchmark


def check_count(tool: str, seen: int, expected: int) -> None:
    if seen != expected:
        raise SystemExit(f"{tool} saw {seen} images, expected {expected}: the two tools did not read the same inputs")


def benchmark(args: argparse.Namespace, folder: Path, n_images: int) -> dict[str, Any]:
    import torch
    from ultralytics import YOLO

    from avala_infer import Engine

    load_before = os.getloadavg()[0]
    ours_threads = torch.get_num_threads()  # before ultralytics sets its own count in its predictor setup
    device = resolve_device(args.device)
    on_cuda = device.startswith("cuda")
    ours_batch = args.ours_batch or (32 if on_cuda else 8)
    ref_batches = args.ref_batches or ([1, 8, 32] if on_cuda else [1, 8])

    # the file given is loaded by YOLO() below as well: trusted as the reference trusts it
    engine = Engine(args.weights, device=device, batch_size=ours_batch, workers=args.workers, trust_weights=True)
    device = engine.device  # canonical: cpu or cuda:N (ultralytics reads cuda:N too)
    reference = YOLO(str(args.weights))  # detection or -seg, as the weights say
    imgsz = engine.predictor.spec.input_size
    depth = max(2 * ours_batch, 2 * engine.workers)  # as the engine's own loader

    progress(f"warm-up: ultralytics at batch {', '.join(map(str, ref_batches))}, then ours (not timed)")
    for batch in ref_batches:
        check_count("ultralytics", run_reference(reference, folder, batch, device, args.ref_half, imgsz)[1], n_images)
    ref_threads = args.ref_threads or torch.get_num_threads()  # by default what ultralytics chose for itself
    torch.set_num_threads(ours_threads)
    check_count("avala-infer", run_ours(engine, folder)[1], n_images)
    batches = collate_batches(engine, folder, ours_batch)
    warm_forward(engine, batches, device)

    refs = {b: Series("ultralytics", b, ref_threads) for b in ref_batches}
    ours = Series("avala-infer", ours_batch, ours_threads)
    decode = Series("decode-only", ours_batch, engine.workers)
    model = Series("model-only", ours_batch, ours_threads)
    for r in range(1, args.rounds + 1):
        torch.set_num_threads(ref_threads)
        for batch, series in refs.items():
            rate, images, boxes = run_reference(reference, folder, batch, device, args.ref_half, imgsz)
            series.add(rate, images, boxes)
            progress(f"round {r}/{args.rounds}: ultralytics batch {batch}: {rate:.2f} images/s, {boxes} boxes")
        torch.set_num_threads(ours_threads)
        stages: dict[str, float] = {}
        rate, images, boxes, errors = run_ours(engine, folder, stages)
        ours.add(rate, images, boxes, errors)
        progress(f"round {r}/{args.rounds}: avala-infer batch {ours_batch}: {rate:.2f} images/s, {boxes} boxes")
        decode.add(*run_decode(folder, engine.workers, depth))
        model.add(*run_forward(engine, batches, device))
        progress(f"round {r}/{args.rounds}: ceilings: decode {decode.rates[-1]:.1f}, model {model.rates[-1]:.1f}")
    for series in (*refs.values(), ours):
        check_count(series.tool, series.images, n_images)

    best = max(refs.values(), key=lambda s: s.median)
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info("ultralytics", "onnxruntime"),
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "weights": str(args.weights),
        "backend": engine.spec.backend,
        "model": engine.predictor.describe(),
        "images": n_images,
        "images_folder": str(args.images),
        "device": device,
        "rounds": args.rounds,
        "confidence": CONFIDENCE,
        "iou": IOU,
        "ref_half": args.ref_half,
        "ref_threads_overridden": args.ref_threads is not None,
        "loader_workers": engine.workers,
        "ours_streams": engine.streams,
        "ours_threads_per_stream": engine.cpu_threads,
        "results": [s.summary() for s in (*refs.values(), ours)],
        "ceilings": {"decode_only": decode.summary(), "model_only": model.summary()},
        "ours_stages_last_round": stages,
        "best_ref_batch": best.batch,
        "ratio": ours.median / best.median,
    }


# --------------------------------------------------------------------------------------------- report


def row(series: dict[str, Any], extra: str, batch: int | str | None = None) -> str:
    """One table line: tool, batch, images/s median, min, max, then ``extra``."""
    batch = series["batch"] if batch is None else batch
    return (
        f"{series['tool']:<13} {batch!s:>5} {series['median']:>10.2f} {series['min']:>8.2f} {series['max']:>8.2f}  "
        f"{extra}"
    )


def report(result: dict[str, Any], write: Callable[[str], None] = print) -> None:
    m = result["machine"]
    write(f"avala-infer detection benchmark, {result['date']}")
    write(f"machine: {m['cpu']}, {m['cores']} cores{', ' + m['gpu'] if 'gpu' in m else ''}, {m['platform']}")
    write(
        f"versions: python {m['python']}, torch {m['torch']}, ultralytics {m['ultralytics']}, "
        f"onnxruntime {m['onnxruntime']}"
    )
    load = result["load_average_1min"]
    write(
        f"load average (1 min): {load['start']:.2f} before, {load['end']:.2f} after (this run adds up to "
        f"{m['cores']}; more means other work shared the CPU and skewed the figures)"
    )
    write(f"model: {result['weights']} -> ours: {result['model']}")
    write(
        f"images: {result['images']} from {result['images_folder']}; device {result['device']}; "
        f"{result['rounds']} round(s); conf {result['confidence']}, iou {result['iou']}"
    )
    threads = {s["tool"]: s["threads"] for s in result["results"]}
    chosen = "--ref-threads" if result["ref_threads_overridden"] else "its own choice"
    write(
        f"torch threads: ultralytics {threads['ultralytics']} ({chosen}); avala-infer "
        f"{result['ours_streams']} stream(s) side by side x {result['ours_threads_per_stream'] or 'default'} "
        f"thread(s), +{result['loader_workers']} loader threads"
    )
    write("")
    write(f"{'tool':<13} {'batch':>5} {'images/s':>10} {'min':>8} {'max':>8}  boxes")
    for s in result["results"]:
        errors = f" ({s['errors']} failed items)" if s["errors"] else ""
        write(row(s, f"{s['boxes']}{errors}"))
    write("")
    ceilings = result["ceilings"]
    decode, model = ceilings["decode_only"], ceilings["model_only"]
    ours = result["results"][-1]
    write("ceilings for ours (same images, same process):")
    write(row(decode, f"our loader pool, {decode['threads']} threads, no model", batch="-"))
    write(row(model, "our forward alone on pre-collated batches grouped by shape, same streams"))
    write(
        f"ours end-to-end = {ours['median'] / model['median']:.0%} of the model-only ceiling, "
        f"{ours['median'] / decode['median']:.0%} of the decode-only ceiling"
    )
    if result.get("ours_stages_last_round"):
        write(
            "ours, the last round's time per image by stage (busy share of the wall time): "
            + stage_report(result["ours_stages_last_round"], result["images"])
        )
    write("")
    refs = {s["batch"]: s for s in result["results"][:-1]}
    ref = refs.get(1, refs[result["best_ref_batch"]])
    diff = (ours["boxes"] - ref["boxes"]) / max(ref["boxes"], 1)
    write(
        f"boxes: ultralytics batch {ref['batch']} = {ref['boxes']}, avala-infer batch {ours['batch']} = "
        f"{ours['boxes']} ({diff:+.1%})"
    )
    if abs(diff) > BOX_TOLERANCE:
        write(f"WARNING: box counts differ by over {BOX_TOLERANCE:.0%}: the two sides may not do the same work")
    write(f"ratio ours/ultralytics(best batch {result['best_ref_batch']}): {result['ratio']:.2f}x")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.weights.is_file():
        raise SystemExit(f"no weights at {args.weights} (set --weights or AVALA_INFER_ASSETS)")
    if not args.images.is_dir():
        raise SystemExit(f"no image folder at {args.images} (set --images or AVALA_INFER_ASSETS)")
    args.weights, args.images = args.weights.resolve(), args.images.resolve()
    with staged_folder(args.images, args.limit) as (folder, n_images):
        result = benchmark(args, folder, n_images)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
