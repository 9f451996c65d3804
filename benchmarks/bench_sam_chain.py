"""Side-by-side box-prompted segmentation benchmark: our detector -> SAM chain against the usual loop.

The reference is what a user writes with the two libraries: for each image, ultralytics ``YOLO.predict`` for the
boxes, then ``SamProcessor(image, input_boxes=boxes)``, ``SamModel(..., multimask_output=False)`` and
``SamProcessor.post_process_masks``, one image at a time. Ours is ``Engine(chain spec).predict(FOLDER)``: the
same detector weights and the same SAM folder, batched (the detector and SAM's image encoder over a batch, the
mask decoder over every box of it). Both run at conf 0.25 and IoU 0.7 and give masks at the original size.

One untimed warm-up pass per side, then rounds alternating the reference and ours; the median images/s over the
rounds is reported for each, and the last line is ``ratio ours/reference: X.XXx``. Instance totals are printed as
a sanity check (equal but for boxes near the thresholds and masks that come out empty, which ours drops).

No SAM weights exist here: by default the script builds a tiny random-weight SAM (hidden size 32, two layers) with
the real model's geometry (1024-pixel input, 256-pixel mask logits), so the postprocessing costs what it costs
with real weights while the encoder costs next to nothing; ``--sam FOLDER`` runs real weights
(``save_pretrained`` of SamModel and SamProcessor).

    python benchmarks/bench_sam_chain.py --rounds 1 --limit 8        # smoke check
    python benchmarks/bench_sam_chain.py                             # yolo11n + tiny SAM on coco128 val2017
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import assets_dir, machine_info, progress  # noqa: E402  (benchmarks/ is on sys.path)

os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics must not reach for the network


def tiny_sam_folder(folder: Path, image_size: int = 1024) -> Path:
    """A random-weight SAM (hidden 32, 2 layers) with SAM's geometry at ``image_size``, saved with its processor."""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    torch.manual_seed(0)
    vision = SamVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=16,
        output_channels=32, window_size=8, global_attn_indexes=[1], mlp_dim=64, num_pos_feats=16,
    )  # fmt: skip
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=image_size, patch_size=16, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64, iou_head_hidden_dim=32
    )
    model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder))
    mask = image_size // 4
    processor = SamProcessor(
        SamImageProcessor(
            size={"longest_edge": image_size},
            pad_size={"height": image_size, "width": image_size},
            mask_size={"longest_edge": mask},
            mask_pad_size={"height": mask, "width": mask},
        )
    )
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def chain_spec(sam: Path, detector: str) -> Any:
    from avala_infer.specs import ModelSpec
    from avala_infer.types import ModelType

    return ModelSpec(
        name="bench-sam-chain",
        model_type=ModelType.INSTANCE_SEGMENTATION,
        backend="transformers",
        weights=str(sam),
        params={"detector": detector},
    )


def run_reference(
    yolo: Any, model: Any, processor: Any, paths: Sequence[Path], conf: float, iou: float, classes: list[int] | None
) -> tuple:
    """The loop one image at a time, SAM on the images with boxes only; (seconds, instances)."""
    import cv2
    import torch

    instances = 0
    t0 = time.perf_counter()
    for path in paths:
        result = yolo.predict(str(path), conf=conf, iou=iou, classes=classes, verbose=False)[0]
        boxes = result.boxes.xyxy.tolist()
        if not boxes:
            continue
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        inputs = processor(images=rgb, input_boxes=[boxes], return_tensors="pt")
        with torch.inference_mode():
            out = model(**inputs, multimask_output=False)
        masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
        instances += len(masks[0])
    return time.perf_counter() - t0, instances


def run_ours(engine: Any, folder: Path, conf: float, iou: float, labels: list[str] | None) -> tuple:
    """(seconds, instances, errors)."""
    instances = errors = 0
    t0 = time.perf_counter()
    for prediction in engine.predict(folder, confidence_threshold=conf, iou_threshold=iou, labels=labels):
        errors += prediction.error is not None
        instances += len(prediction.result)
    return time.perf_counter() - t0, instances, errors


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_images = assets_dir() / "data" / "coco128" / "images" / "val2017"
    parser.add_argument("--images", type=Path, default=default_images, help="a folder of images (coco128 val2017)")
    parser.add_argument("--detector", default=str(assets_dir() / "models" / "yolo11n.pt"), help="YOLO .pt weights")
    parser.add_argument("--sam", type=Path, default=None, help="a SAM folder (default: a tiny random one)")
    parser.add_argument("--sam-size", type=int, default=1024, help="the tiny SAM's input size (default 1024)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--batch", type=int, default=8, help="our batch size (default 8)")
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--iou", type=float, default=0.7)
    parser.add_argument(
        "--labels", default=None, help="comma-separated detector labels to keep (ultralytics' classes=), e.g. dog"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from transformers import SamModel, SamProcessor
    from ultralytics import YOLO

    from avala_infer import Engine

    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for path in paths:  # a folder of exactly these images, for our engine
            (folder / path.name).symlink_to(path.resolve())
        sam = args.sam or tiny_sam_folder(Path(tmp) / "tiny-sam", args.sam_size)
        ours_threads = torch.get_num_threads()
        engine = Engine(chain_spec(sam, args.detector), device="cpu", batch_size=args.batch, trust_weights=True)
        yolo = YOLO(args.detector)
        model = SamModel.from_pretrained(str(sam)).eval()
        processor = SamProcessor.from_pretrained(str(sam))
        labels = args.labels.split(",") if args.labels else None
        classes = [list(yolo.names.values()).index(name) for name in labels] if labels else None
        progress(f"{len(paths)} images; warm-up")
        run_reference(yolo, model, processor, paths, args.conf, args.iou, classes)
        ref_threads = torch.get_num_threads()  # what ultralytics chose for itself
        torch.set_num_threads(ours_threads)
        run_ours(engine, folder, args.conf, args.iou, labels)
        rates: dict[str, list[float]] = {"reference": [], "ours": []}
        counts: dict[str, int] = {}
        for round_number in range(args.rounds):
            torch.set_num_threads(ref_threads)
            seconds, counts["reference"] = run_reference(yolo, model, processor, paths, args.conf, args.iou, classes)
            rates["reference"].append(len(paths) / seconds)
            torch.set_num_threads(ours_threads)
            seconds, counts["ours"], errors = run_ours(engine, folder, args.conf, args.iou, labels)
            if errors:
                raise SystemExit(f"{errors} of our predictions failed")
            rates["ours"].append(len(paths) / seconds)
            progress(
                f"round {round_number + 1}: reference {rates['reference'][-1]:.2f} img/s, ours {rates['ours'][-1]:.2f}"
            )
        engine.close()
    medians = {tool: statistics.median(series) for tool, series in rates.items()}
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info("transformers", "ultralytics"),
        "images": len(paths),
        "sam": str(args.sam) if args.sam else f"tiny random SAM, input {args.sam_size}",
        "labels": labels,
        "reference_threads": ref_threads,
        "ours_threads": ours_threads,
        "rates": rates,
        "medians": medians,
        "instances": counts,
        "ratio": medians["ours"] / medians["reference"],
    }
    print(f"images: {len(paths)}, SAM: {result['sam']}, detector: {args.detector}, labels: {labels or 'all'}")
    for tool in ("reference", "ours"):
        series = rates[tool]
        print(
            f"{tool:>9}: {medians[tool]:7.2f} img/s (min {min(series):.2f}, max {max(series):.2f}), "
            f"{counts[tool]} instances"
        )
    print(f"ratio ours/reference: {result['ratio']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
