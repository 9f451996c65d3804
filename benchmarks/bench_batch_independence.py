"""Batch independence over all 256 coco128 images (train2017 + val2017): how many images get other detections
in batches than alone (issue 9, item 0). Not a timing benchmark: a count, too long for the test suite.

Each image is labeled alone (batch size 1) and in batches: the engine's shape buckets over the images in
sorted order (and, with ``--shuffle SEED``, in a shuffled order too), each ``--batch`` size in turn. An image
differs when its detection count or classes differ, or a box moves by more than 1e-3 px or a score by more
than 1e-5 (torch's batched forward differs from its single-image forward in the last float32 bits;
onnxruntime's does not). ``--ultralytics`` also counts, for each run, the images whose detections differ from
ultralytics' predict (batch 1, conf 0.25, IoU 0.7, rect, 640).

    python benchmarks/bench_batch_independence.py                      # yolo11n.onnx and yolo11n.pt, 8 and 32
    python benchmarks/bench_batch_independence.py --shuffle 0 --ultralytics --json out.json

Run it on older code the same way (e.g. an export of an older commit with ``PYTHONPATH`` at it) to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import assets_dir, machine_info, progress  # noqa: E402

BOX_TOLERANCE = 1e-3  # px
SCORE_TOLERANCE = 1e-5


def _label(engine, images: list[Path]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = {}
    for p in engine.predict(images):
        assert p.ok, p.error
        d = p.detections
        out[str(Path(p.source).resolve())] = (d.xyxy, d.confidence, d.class_id)
    return out


def _same(a: tuple, b: tuple) -> bool:
    (boxes_a, scores_a, cls_a), (boxes_b, scores_b, cls_b) = a, b
    if len(cls_a) != len(cls_b) or not np.array_equal(cls_a, cls_b):
        return False
    return bool(
        np.abs(boxes_a - boxes_b).max(initial=0) <= BOX_TOLERANCE
        and np.abs(scores_a - scores_b).max(initial=0) <= SCORE_TOLERANCE
    )


def _ultralytics(weights: Path, folders: list[Path]) -> dict[str, tuple]:
    from ultralytics import YOLO

    model = YOLO(str(weights))
    out = {}
    for folder in folders:
        for r in model.predict(str(folder), stream=True, verbose=False, batch=1, rect=True, conf=0.25, iou=0.7,
                               device="cpu", imgsz=640):  # fmt: skip
            b = r.boxes
            out[str(Path(r.path).resolve())] = (b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy().astype(np.int64))
    return out


def _same_as_reference(ours: tuple, ref: tuple) -> bool:
    """Same count and classes (as multisets) and each reference box within 1 px and 1e-3 of one of ours."""
    (boxes, scores, cls), (ref_boxes, ref_scores, ref_cls) = ours, ref
    if len(cls) != len(ref_cls) or sorted(cls.tolist()) != sorted(ref_cls.tolist()):
        return False
    used: set[int] = set()
    for box, score, c in zip(ref_boxes, ref_scores, ref_cls):
        close = np.abs(boxes - box).max(1) <= 1.0
        close &= (np.abs(scores - score) <= 1e-3) & (cls == c)
        free = [j for j in np.flatnonzero(close) if j not in used]
        if not free:
            return False
        used.add(free[0])
    return True


def run(
    weights: Path, images: list[Path], folders: list[Path], batches: list[int], seed: int | None, reference: bool
) -> dict[str, Any]:
    from avala_infer import Engine

    progress(f"{weights.name}: {len(images)} images alone")
    alone = _label(Engine(weights, device="cpu", batch_size=1), images)
    orders = {"sorted": images}
    if seed is not None:
        orders[f"shuffled({seed})"] = [images[i] for i in np.random.default_rng(seed).permutation(len(images))]
    result: dict[str, Any] = {
        "weights": weights.name,
        "images": len(images),
        "detections_alone": sum(len(v[2]) for v in alone.values()),
        "batched": {},
    }
    runs = {}
    for order, listed in orders.items():
        for batch in batches:
            progress(f"{weights.name}: {len(images)} images in batches of {batch}, {order} order")
            batched = runs[f"{order}, batch {batch}"] = _label(Engine(weights, device="cpu", batch_size=batch), listed)
            differ = sorted(Path(k).name for k in alone if not _same(alone[k], batched[k]))
            result["batched"][f"{order}, batch {batch}"] = {
                "differ_from_alone": len(differ),
                "differing": differ,
                "detections": sum(len(v[2]) for v in batched.values()),
            }
    if reference:
        progress(f"{weights.name}: ultralytics, one image a batch")
        ref = _ultralytics(weights, folders)
        for name, ours in {"alone": alone, **runs}.items():
            off = sorted(Path(k).name for k in ref if not _same_as_reference(ours[k], ref[k]))
            result.setdefault("differ_from_ultralytics", {})[name] = {"count": len(off), "differing": off}
    return result


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    models = assets_dir() / "models"
    os.environ.setdefault("AVALA_INFER_MODELS", str(models))  # the shared assets' folder: trusted .pt weights
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, nargs="+", default=[models / "yolo11n.onnx", models / "yolo11n.pt"])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32], help="batch sizes to compare with alone")
    parser.add_argument("--shuffle", type=int, metavar="SEED", help="also batch the images in a shuffled order")
    parser.add_argument("--ultralytics", action="store_true", help="also compare with ultralytics' predict")
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args(argv)
    coco = assets_dir() / "data" / "coco128" / "images"
    folders = [coco / "train2017", coco / "val2017"]
    images = [p.resolve() for folder in folders for p in sorted(folder.glob("*.jpg"))]
    report = {
        "machine": machine_info("onnxruntime", "ultralytics"),
        "results": [run(w, images, folders, args.batch, args.shuffle, args.ultralytics) for w in args.weights],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
