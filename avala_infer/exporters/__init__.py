"""Writers of predictions: JSONL, COCO, YOLO txt, Label Studio, dry-run previews, the summary, the failure log."""

from __future__ import annotations

from pathlib import Path

from avala_infer.errors import ConfigError

FORMATS = ("jsonl", "coco", "yolo", "labelstudio")


def make_writer(fmt: str, out_dir: Path, labels: tuple[str, ...], mask_format: str = "rle"):
    """The annotation writer for ``fmt``; an unknown format lists the known ones."""
    if fmt == "jsonl":
        from avala_infer.exporters.jsonl import JsonlWriter

        return JsonlWriter(out_dir, labels)
    if fmt == "coco":
        from avala_infer.exporters.coco import CocoWriter

        return CocoWriter(out_dir, labels, mask_format)
    if fmt == "yolo":
        from avala_infer.exporters.yolo import YoloWriter

        return YoloWriter(out_dir, labels)
    if fmt == "labelstudio":
        from avala_infer.exporters.labelstudio import LabelStudioWriter

        return LabelStudioWriter(out_dir, labels)
    raise ConfigError(f"unknown output format {fmt!r}; known formats: {', '.join(FORMATS)}")
