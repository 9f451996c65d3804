"""The usual detector -> SAM loop, as a user writes it with ultralytics and transformers: the reference side of
``bench_sam_chain.py``, in its process (imported) and as a whole process of its own (run as a script).

For each image: ``YOLO.predict`` for the boxes, then, when there are any, ``SamProcessor(image, input_boxes=...)``,
``SamModel(..., multimask_output=False)`` and ``SamProcessor.post_process_masks``, one image at a time. As a script
it writes each mask as COCO RLE (pycocotools) with its box, class and score to one JSON file, as a user keeps them:

    python benchmarks/sam_loop.py DETECTOR.pt SAM_FOLDER IMAGE_FOLDER OUT.json [--conf 0.25] [--iou 0.7] [--classes 0,2]
        [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics must not reach for the network

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def segment_image(
    yolo: Any,
    model: Any,
    processor: Any,
    path: Path,
    conf: float,
    iou: float,
    classes: list[int] | None,
    device: str = "cpu",
) -> tuple[Any, Any]:
    """(ultralytics' result for the image, bool masks (n, H, W) at the original size, or None without boxes); the
    detector and SAM run on ``device`` (``model`` is there already: :func:`load`)."""
    import cv2
    import torch

    result = yolo.predict(str(path), conf=conf, iou=iou, classes=classes, device=device, verbose=False)[0]
    boxes = result.boxes.xyxy.tolist()
    if not boxes:
        return result, None
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    inputs = processor(images=rgb, input_boxes=[boxes], return_tensors="pt").to(device)
    with torch.inference_mode():
        out = model(**inputs, multimask_output=False)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
    return result, masks[0][:, 0].cpu()


def load(detector: str, sam: str, device: str = "cpu") -> tuple[Any, Any, Any]:
    from transformers import SamModel, SamProcessor
    from ultralytics import YOLO

    return YOLO(detector), SamModel.from_pretrained(sam).eval().to(device), SamProcessor.from_pretrained(sam)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("detector")
    parser.add_argument("sam")
    parser.add_argument("images", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--iou", type=float, default=0.7)
    parser.add_argument("--classes", default=None, help="comma-separated class ids to keep")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    args = parser.parse_args(argv)
    import numpy as np
    from pycocotools import mask as mask_utils

    yolo, model, processor = load(args.detector, args.sam, args.device)
    classes = [int(c) for c in args.classes.split(",")] if args.classes else None
    annotations = []
    for path in sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        result, masks = segment_image(yolo, model, processor, path, args.conf, args.iou, classes, args.device)
        if masks is None:
            continue
        rles = mask_utils.encode(np.asfortranarray(masks.numpy().transpose(1, 2, 0).astype(np.uint8)))
        for rle, box, score, cls in zip(rles, result.boxes.xyxy.tolist(), result.boxes.conf.tolist(),
                                        result.boxes.cls.tolist()):  # fmt: skip
            annotations.append({
                "image": path.name, "bbox": box, "score": score, "category": result.names[int(cls)],
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
            })  # fmt: skip
    args.out.write_text(json.dumps({"annotations": annotations}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
