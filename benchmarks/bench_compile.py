"""torch.compile (spec ``torch_compile``) against eager for the ultralytics YOLO backend: the same letterboxed
coco128 batches through both, their raw outputs and detections compared, the first (compiling) call and the
steady forward timed.

It is a benchmark, not a test, because the first call compiles: on the 2-core CPU that took ~12 minutes (inductor
builds its C++ kernels with g++), on a GPU tens of seconds. Square letterboxing: every batch has one shape, so one
compile. On CUDA the default mode is ``reduce-overhead`` (CUDA graphs), on a CPU ``default``.

    python benchmarks/bench_compile.py --input-size 320 --images 4        # CPU: minutes, mostly compiling
    python benchmarks/bench_compile.py --device cuda --images 256 --batch 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from common import assets_dir, machine_info, progress


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=assets_dir() / "models" / "yolo11n.pt")
    parser.add_argument("--images", type=int, default=8, help="coco128 val2017 images (default 8)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--input-size", type=int, default=640)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--mode", default=None, help="torch.compile mode (default: reduce-overhead on cuda, else default)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import cv2
    import torch

    from avala_infer.predictors.base import resolve_device
    from avala_infer.predictors.detection.ultralytics import UltralyticsDetector, UltralyticsSegmenter
    from avala_infer.specs import find_spec

    device = resolve_device(args.device)
    mode = args.mode or ("reduce-overhead" if device.startswith("cuda") else "default")
    spec = find_spec(args.weights).with_overrides(input_size=args.input_size, batch_size=args.batch, letterbox="square")
    predictor_class = UltralyticsSegmenter if spec.model_type.value == "instance_segmentation" else UltralyticsDetector
    eager = predictor_class(spec, args.weights, device)
    compiled = predictor_class(spec.with_overrides(torch_compile=mode), args.weights, device)
    paths = sorted((assets_dir() / "data" / "coco128" / "images" / "val2017").glob("*.jpg"))[: args.images]
    prepared = [eager.prepare(cv2.imread(str(p))) for p in paths]
    batches = [prepared[i : i + args.batch] for i in range(0, len(prepared), args.batch)]
    batches = [b for b in batches if len(b) == args.batch] or batches[:1]  # one shape: full batches only

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def run(predictor, batch):
        with torch.inference_mode():
            raw = predictor.forward(predictor.collate(batch))
            sync()
            return raw

    progress(f"compiling ({mode}) on the first batch ...")
    t0 = time.perf_counter()
    run(compiled, batches[0])
    first_call = time.perf_counter() - t0
    progress(f"first call {first_call:.1f}s")
    worst_raw = 0.0
    differing = 0  # images whose detections differ (count, or a box by half a pixel or more)
    for batch in batches:
        a, b = run(eager, batch), run(compiled, batch)
        a0, b0 = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
        worst_raw = max(worst_raw, (a0.float() - b0.float()).abs().max().item() / max(a0.abs().max().item(), 1e-9))
        with torch.inference_mode():
            da, db = eager.postprocess(a, batch), compiled.postprocess(b, batch)
        for x, y in zip(da, db):
            differing += not (len(x) == len(y) and bool((abs(x.xyxy - y.xyxy) < 0.5).all()))
    timings = {"eager": [], "compiled": []}
    for _ in range(args.rounds):
        for name, predictor in (("eager", eager), ("compiled", compiled)):
            t0 = time.perf_counter()
            for batch in batches:
                run(predictor, batch)
            timings[name].append((time.perf_counter() - t0) * 1e3 / len(batches))
    eager_ms, compiled_ms = (statistics.median(timings[k]) for k in ("eager", "compiled"))
    report = {
        "machine": machine_info("ultralytics"),
        "weights": args.weights.name,
        "device": device,
        "mode": mode,
        "batch": args.batch,
        "input_size": args.input_size,
        "batches": len(batches),
        "first_call_s": round(first_call, 2),
        "eager_ms_per_batch": round(eager_ms, 2),
        "compiled_ms_per_batch": round(compiled_ms, 2),
        "speedup": round(eager_ms / compiled_ms, 3),
        "max_raw_diff_relative": worst_raw,
        "images": sum(len(b) for b in batches),
        "images_with_other_detections": differing,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if worst_raw < 1e-2 else 1  # fp16 on CUDA moves a borderline box now and then; more is a bug


if __name__ == "__main__":
    sys.exit(main())
