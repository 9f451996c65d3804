"""Writers of predictions: JSONL, COCO, YOLO txt, Label Studio, CoNLL, mask PNGs, dry-run previews, the summary,
the failure log; the JSONL record format, both ways (``records``), and the format codecs (``codecs``).

Writers take :class:`~avala_infer.Prediction` objects (and, for the preview, the pictures the engine decoded):
they import no engine, store or model code."""

from __future__ import annotations

from pathlib import Path

from avala_infer.errors import ConfigError
from avala_infer.types import ModelType

FORMATS = ("jsonl", "coco", "yolo", "labelstudio", "conll", "masks")

# Which formats can hold each model type's annotations.
FORMATS_FOR = {
    ModelType.OBJECT_DETECTION: ("jsonl", "coco", "yolo", "labelstudio"),
    ModelType.INSTANCE_SEGMENTATION: ("jsonl", "coco", "yolo", "labelstudio"),
    ModelType.SEMANTIC_SEGMENTATION: ("jsonl", "coco", "labelstudio", "masks"),
    ModelType.IMAGE_CLASSIFICATION: ("jsonl", "labelstudio"),
    ModelType.TEXT_CLASSIFICATION: ("jsonl", "labelstudio"),
    ModelType.NAMED_ENTITY_RECOGNITION: ("jsonl", "labelstudio", "conll"),
}


def check_formats(formats: list[str], model_type: ModelType) -> None:
    """Refuse, before any work, a format that does not exist or cannot hold this model type's annotations."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown output format(s) {unknown}; known formats: {', '.join(FORMATS)}")
    allowed = FORMATS_FOR[model_type]
    wrong = [f for f in formats if f not in allowed]
    if wrong:
        raise ConfigError(
            f"format(s) {wrong} cannot hold {model_type.value} annotations; use one of: {', '.join(allowed)}"
        )


def make_writer(
    fmt: str,
    out_dir: Path,
    labels: tuple[str, ...],
    mask_format: str = "rle",
    model_type: ModelType = ModelType.OBJECT_DETECTION,
    image_urls=None,
):
    """The annotation writer for ``fmt``; an unknown format, or one the model type cannot use, is an error.
    ``image_urls`` (a ``labelstudio.ImageUrls``) says how Label Studio tasks point at their images."""
    check_formats([fmt], model_type)
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

        return LabelStudioWriter(out_dir, labels, model_type, image_urls=image_urls)
    if fmt == "conll":
        from avala_infer.exporters.conll import ConllWriter

        return ConllWriter(out_dir, labels)
    from avala_infer.exporters.masks import MaskWriter

    return MaskWriter(out_dir, labels)
