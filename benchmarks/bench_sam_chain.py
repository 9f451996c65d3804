"""Side-by-side box-prompted segmentation benchmark: our detector -> SAM chain against the usual loop.

The reference is what a user writes with the two libraries (``sam_loop.py``): for each image, ultralytics
``YOLO.predict`` for the boxes, then, when there are any, ``SamProcessor(image, input_boxes=boxes)``,
``SamModel(..., multimask_output=False)`` and ``SamProcessor.post_process_masks``, one image at a time. Ours is
``Engine(chain spec).predict(FOLDER)``: the same detector weights and the same SAM folder, batched (the detector
over a batch, SAM's image encoder over its images that kept a box, the mask decoder over every box of it). Both
run at conf 0.25 and IoU 0.7 (``--labels`` keeps only those classes on both sides) and give masks at the original
size.

In-process (the default): one untimed warm-up pass per side, then rounds alternating the reference and ours; the
median images/s over the rounds is reported for each, and the last line is ``ratio ours/reference: X.XXx``.
Instance totals are printed as a sanity check (equal but for boxes near the thresholds and masks that come out
empty, which ours drops). ``--process``: whole processes as a user runs them from a shell, start-up included,
``avala-infer label FOLDER --model CHAIN.yaml --format coco`` against ``python sam_loop.py`` (which writes its
masks as COCO RLE with pycocotools), alternating, the median of the rounds, each also on a folder of one image to
tell the start-up from the rest.

No SAM weights exist here: by default the script builds a tiny random-weight SAM (hidden size 32, two layers) with
the real model's geometry (1024-pixel input, 256-pixel mask logits), so the postprocessing costs what it costs
with real weights; ``--sam FOLDER`` runs real weights (``save_pretrained`` of SamModel and SamProcessor).

    python benchmarks/bench_sam_chain.py --rounds 1 --limit 8        # smoke check
    python benchmarks/bench_sam_chain.py                             # yolo11n + tiny SAM on coco128 val2017
    python benchmarks/bench_sam_chain.py --process --limit 48        # whole processes from a shell
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

from bench_process import avala_infer_command, wall_seconds  # noqa: E402
from common import assets_dir, machine_info, progress  # noqa: E402  (benchmarks/ is on sys.path)
from sam_loop import load, segment_image  # noqa: E402

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
    yolo: Any,
    model: Any,
    processor: Any,
    paths: Sequence[Path],
    conf: float,
    iou: float,
    classes: list[int] | None,
    device: str,
) -> tuple:
    """The loop one image at a time (``sam_loop.segment_image``), SAM on the images with boxes only; (seconds,
    instances)."""
    instances = 0
    t0 = time.perf_counter()
    for path in paths:
        _, masks = segment_image(yolo, model, processor, path, conf, iou, classes, device)
        instances += 0 if masks is None else len(masks)
    return time.perf_counter() - t0, instances


def run_ours(engine: Any, folder: Path, conf: float, iou: float, labels: list[str] | None) -> tuple:
    """(seconds, instances, errors)."""
    instances = errors = 0
    t0 = time.perf_counter()
    for prediction in engine.predict(folder, confidence_threshold=conf, iou_threshold=iou, labels=labels):
        errors += prediction.error is not None
        instances += len(prediction.result)
    return time.perf_counter() - t0, instances, errors


def chain_spec_file(folder: Path, sam: Path, detector: str) -> Path:
    """The chain as a spec file, for the CLI."""
    spec = folder / "bench-sam-chain.yaml"
    spec.write_text(
        "name: bench-sam-chain\nmodel_type: instance_segmentation\nbackend: transformers\n"
        f"weights: {json.dumps(str(sam))}\nparams:\n  detector: {json.dumps(detector)}\n",
        encoding="utf-8",
    )
    return spec


def class_ids(names: Any, labels: list[str] | None) -> list[int] | None:
    """The detector's class ids of ``labels`` (ultralytics' ``classes=``), from its ``names`` dict."""
    return [list(names.values()).index(name) for name in labels] if labels else None


def bench_processes(args: argparse.Namespace, paths: Sequence[Path], folder: Path, sam: Path, tmp: Path) -> dict:
    """Whole processes from a shell, start-up included: ``avala-infer label FOLDER --model CHAIN.yaml --format coco``
    (the CLI's defaults) against ``python sam_loop.py`` (the loop writing COCO RLE with pycocotools), alternating,
    median of the rounds; start-up is the same command on a folder of one image."""
    detector = str(Path(args.detector).resolve())
    spec = chain_spec_file(tmp, sam, detector)
    env = {**os.environ, "YOLO_OFFLINE": "1", "AVALA_INFER_MODELS": str(Path(detector).parent)}
    labels = args.labels.split(",") if args.labels else None
    if labels:
        from ultralytics import YOLO

        classes = ",".join(map(str, class_ids(YOLO(detector).names, labels)))
    one = tmp / "one"
    one.mkdir()
    (one / paths[0].name).symlink_to(paths[0].resolve())

    def ours(source: Path, out: Path) -> list[str]:
        command = [*avala_infer_command(), "label", str(source), "--model", str(spec), "--format", "coco"]
        command += ["--out", str(out)]
        command += ["--confidence", str(args.conf), "--iou", str(args.iou), "--device", args.device, "--overwrite"]
        return command + (["--labels", ",".join(labels)] if labels else [])

    def reference(source: Path, out: Path) -> list[str]:
        script = str(Path(__file__).with_name("sam_loop.py"))
        command = [sys.executable, script, detector, str(sam), str(source), str(out / "masks.json")]
        command += ["--conf", str(args.conf), "--iou", str(args.iou), "--device", args.device]
        return command + (["--classes", classes] if labels else [])

    tools = {"reference": reference, "ours": ours}
    written_by = {"reference": "masks.json", "ours": "annotations.coco.json"}
    walls: dict[str, list[float]] = {name: [] for name in tools}
    startups: dict[str, list[float]] = {name: [] for name in tools}
    instances: dict[str, int] = {}
    for round_number in range(args.rounds):
        for name, command in tools.items():
            out = tmp / f"out-{name}"
            out.mkdir(exist_ok=True)
            startups[name].append(wall_seconds(command(one, out), env, tmp))
            walls[name].append(wall_seconds(command(folder, out), env, tmp))
            written = json.loads((out / written_by[name]).read_text())
            instances[name] = len(written["annotations"])
            progress(
                f"round {round_number + 1} {name}: {len(paths) / walls[name][-1]:.2f} img/s ({walls[name][-1]:.1f} s),"
                f" start-up {startups[name][-1]:.1f} s, {instances[name]} instances"
            )
    result: dict[str, Any] = {
        "images": len(paths),
        "device": args.device,
        "rounds": args.rounds,
        "instances": instances,
        "tools": {},
    }
    for name in tools:
        wall, startup = statistics.median(walls[name]), statistics.median(startups[name])
        result["tools"][name] = {
            "walls_s": walls[name],
            "startups_s": startups[name],
            "img_per_s": len(paths) / wall,
            "img_per_s_after_startup": (len(paths) - 1) / (wall - startup) if wall > startup else None,
        }
    ours_rates, ref_rates = result["tools"]["ours"], result["tools"]["reference"]
    result["ratio"] = ours_rates["img_per_s"] / ref_rates["img_per_s"]
    if ours_rates["img_per_s_after_startup"] and ref_rates["img_per_s_after_startup"]:
        result["ratio_after_startup"] = ours_rates["img_per_s_after_startup"] / ref_rates["img_per_s_after_startup"]
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_images = assets_dir() / "data" / "coco128" / "images" / "val2017"
    parser.add_argument("--images", type=Path, default=default_images, help="a folder of images (coco128 val2017)")
    parser.add_argument("--detector", default=str(assets_dir() / "models" / "yolo11n.pt"), help="YOLO .pt weights")
    parser.add_argument("--sam", type=Path, default=None, help="a SAM folder (default: a tiny random one)")
    parser.add_argument("--sam-size", type=int, default=1024, help="the tiny SAM's input size (default 1024)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--batch", type=int, default=None, help="our batch size (default: the engine's for the device)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N], for both sides")
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--iou", type=float, default=0.7)
    parser.add_argument(
        "--labels", default=None, help="comma-separated detector labels to keep (ultralytics' classes=), e.g. dog"
    )
    parser.add_argument(
        "--process", action="store_true", help="whole processes from a shell (start-up included) instead of in-process"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def report_processes(args: argparse.Namespace, result: dict[str, Any]) -> int:
    result["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    result["machine"] = machine_info("transformers", "ultralytics")
    result["sam"] = str(args.sam) if args.sam else f"tiny random SAM, input {args.sam_size}"
    print(f"whole processes: images: {result['images']}, SAM: {result['sam']}, labels: {args.labels or 'all'}")
    for name, rates in result["tools"].items():
        after = rates["img_per_s_after_startup"]
        print(
            f"{name:>9}: {rates['img_per_s']:7.2f} img/s, start-up {statistics.median(rates['startups_s']):.1f} s, "
            f"after it {after:.2f} img/s, {result['instances'][name]} instances"
            if after
            else f"{name:>9}: {rates['img_per_s']:7.2f} img/s, {result['instances'][name]} instances"
        )
    after = f" (after start-up: {result['ratio_after_startup']:.2f}x)" if "ratio_after_startup" in result else ""
    print(f"ratio ours/reference, whole processes: {result['ratio']:.2f}x{after}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from avala_infer import Engine

    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for path in paths:  # a folder of exactly these images, for our engine
            (folder / path.name).symlink_to(path.resolve())
        sam = args.sam or tiny_sam_folder(Path(tmp) / "tiny-sam", args.sam_size)
        if args.process:
            return report_processes(args, bench_processes(args, paths, folder, sam, Path(tmp)))
        ours_threads = torch.get_num_threads()
        engine = Engine(chain_spec(sam, args.detector), device=args.device, batch_size=args.batch, trust_weights=True)
        yolo, model, processor = load(args.detector, str(sam), args.device)
        labels = args.labels.split(",") if args.labels else None
        classes = class_ids(yolo.names, labels)
        progress(f"{len(paths)} images; warm-up")
        run_reference(yolo, model, processor, paths, args.conf, args.iou, classes, args.device)
        ref_threads = torch.get_num_threads()  # what ultralytics chose for itself
        torch.set_num_threads(ours_threads)
        run_ours(engine, folder, args.conf, args.iou, labels)
        rates: dict[str, list[float]] = {"reference": [], "ours": []}
        counts: dict[str, int] = {}
        for round_number in range(args.rounds):
            torch.set_num_threads(ref_threads)
            seconds, counts["reference"] = run_reference(
                yolo, model, processor, paths, args.conf, args.iou, classes, args.device
            )
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
        "device": args.device,
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
