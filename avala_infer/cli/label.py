"""``avala-infer label``: label files, folders, globs or texts with one model, one-shot, and write the annotations
to an output folder (the library's :func:`avala_infer.label`; no store, no job).

Exit codes: 0 every item labeled; 1 an error stopped the run (bad model, spec, weights, labels...); 2 a usage
error (click's convention); 3 the run finished but some items failed (listed in ``OUT/failures.jsonl`` and
summarised on stderr).
"""

from __future__ import annotations

import json
import sys

import click

from avala_infer.cli.common import (
    EXIT_ERROR,
    EXIT_ITEMS_FAILED,
    FORMAT_CHOICES,
    LabelProgress,
    label_studio_url_options,
    mask_format_option,
    pairs,
)
from avala_infer.errors import AvalaInferError


@click.command("label")
@click.argument("sources", nargs=-1)
@click.option("-m", "--model", required=True, help="Model name (see `models list`), spec .yaml, or .pt/.onnx path.")
@click.option("--confidence", default=0.25, show_default=True, type=click.FloatRange(0, 1), help="Minimum score.")
@click.option("--iou", default=0.7, show_default=True, type=click.FloatRange(0, 1), help="NMS IoU threshold.")
@click.option(
    "--labels",
    default=None,
    help="Keep only these labels, comma-separated (e.g. car,truck). For a prompted model (open-vocabulary "
    "detection) they are what to look for: --labels forklift,pallet.",
)
@click.option(
    "--label-threshold",
    "label_thresholds",
    multiple=True,
    metavar="LABEL=SCORE",
    help="Per-label minimum score (repeatable).",
)
@click.option(
    "--map",
    "label_map",
    multiple=True,
    metavar="FROM=TO",
    help="Rename/merge a model label into a project label; FROM= drops it (repeatable).",
)
@click.option(
    "-f",
    "--format",
    "formats",
    multiple=True,
    type=FORMAT_CHOICES,
    help="Output format (repeatable; which ones suit a model type: see the README). Default: jsonl.",
)
@mask_format_option
@click.option(
    "--top-k", default=5, show_default=True, type=click.IntRange(1), help="Classes kept per item (classifiers)."
)
@click.option(
    "--aggregation",
    default="first",
    show_default=True,
    type=click.Choice(["none", "simple", "first", "average", "max"]),
    help="How NER token predictions become entities (as transformers' aggregation_strategy).",
)
@click.option(
    "--text", "texts", multiple=True, metavar="TEXT", help="A literal text to label (text models; repeatable)."
)
@click.option("--text-field", default="text", show_default=True, help="JSONL field / CSV column holding the text.")
@click.option("--per-line", is_flag=True, help="One item per non-empty line of .txt files (else one per file).")
@click.option(
    "-o",
    "--out",
    default=None,
    type=click.Path(file_okay=False),
    help="Output folder (default: a new one, runs/label, runs/label2, ...). One run at a time may use it.",
)
@click.option("--overwrite", is_flag=True, help="Remove the outputs of an earlier run in --out (every format) first.")
@click.option("--exist-ok", is_flag=True, help="Write into an --out that holds an earlier run's outputs, as it is.")
@click.option("--dry-run", is_flag=True, help="Write previews and summary.json only, no annotation files.")
@click.option("--preview-count", default=50, show_default=True, type=click.IntRange(0), help="Items to preview.")
@click.option("-b", "--batch-size", type=click.IntRange(1), default=None, help="Images per forward pass.")
@click.option(
    "--imgsz",
    "input_size",
    type=click.IntRange(32),
    default=None,
    help="Model input size (YOLO: rounded up to a multiple of the stride, 32).",
)
@click.option(
    "--letterbox",
    type=click.Choice(["rect", "square"]),
    default=None,
    help="YOLO padding: rect (as ultralytics' predict; the default on a CPU) or square (full batches; the GPU's).",
)
@click.option("--max-det", default=300, show_default=True, type=click.IntRange(1), help="Max boxes per image.")
@click.option(
    "-d", "--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N, several GPUs (cuda:0,1) or all."
)
@click.option(
    "--decode",
    type=click.Choice(["cpu", "gpu", "auto"]),
    default="cpu",
    show_default=True,
    help="Where JPEGs are decoded: cpu (the loader threads), gpu (nvJPEG on the model's CUDA device, YOLO .pt "
    "models; other files still on the CPU) or auto (gpu where it can run). cpu until measured on a GPU.",
)
@click.option(
    "--trust-weights",
    is_flag=True,
    help="Load a pickled .pt from outside the model folders for this run (a .pt runs code when loaded).",
)
@label_studio_url_options
def label_command(
    sources,
    model,
    confidence,
    iou,
    labels,
    label_thresholds,
    label_map,
    formats,
    mask_format,
    top_k,
    aggregation,
    texts,
    text_field,
    per_line,
    out,
    overwrite,
    exist_ok,
    dry_run,
    preview_count,
    batch_size,
    input_size,
    letterbox,
    max_det,
    device,
    decode,
    trust_weights,
    ls_root,
    ls_url_prefix,
) -> None:
    """Label SOURCES (files, folders searched recursively, or globs) and write annotations to --out.

    Image models read image files; text models read .txt (whole file, or --per-line), .jsonl and .csv/.tsv
    (--text-field) files and --text strings.
    """
    from avala_infer.labeling import label
    from avala_infer.types import Text

    if not sources and not texts:
        raise click.UsageError("give SOURCES (files, folders or globs) or --text")
    if overwrite and exist_ok:
        raise click.UsageError("--overwrite removes an earlier run's outputs, --exist-ok keeps them: pass one")
    try:
        report = label(
            [*sources, *(Text(t) for t in texts)],
            model,
            out=out,
            overwrite=overwrite,
            exist_ok=exist_ok,
            formats=formats or ("jsonl",),
            mask_format=mask_format,
            dry_run=dry_run,
            preview_count=preview_count,
            confidence_threshold=confidence,
            iou_threshold=iou,
            labels=[x.strip() for x in labels.split(",")] if labels else None,
            label_thresholds=pairs(label_thresholds, "--label-threshold", float),
            label_map=pairs(label_map, "--map"),
            max_det=max_det,
            top_k=top_k,
            aggregation=aggregation,
            text_field=text_field,
            per_line=per_line,
            device=device,
            batch_size=batch_size,
            input_size=input_size,
            letterbox=letterbox,
            decode=decode,
            progress=LabelProgress(),
            trust_weights=trust_weights,
            ls_root=ls_root,
            ls_url_prefix=ls_url_prefix,
        )
    except AvalaInferError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    s = report.summary
    what = "previews in " + str(report.out_dir / "preview") if dry_run else "annotations in " + str(report.out_dir)
    click.echo(
        f"{report.succeeded}/{report.total} items labeled, {s['annotations']} annotations, "
        f"{s['throughput_items_per_s']} items/s; {what}",
        err=True,
    )
    if report.failed:
        click.echo(f"{report.failed} item(s) failed; reasons in {report.failures_file}:", err=True)
        with open(report.failures_file, encoding="utf-8") as failures:
            for n, line in enumerate(failures):
                if n == 10:
                    click.echo(f"  ... and {report.failed - 10} more", err=True)
                    break
                click.echo(f"  {json.loads(line)['error']}", err=True)
        sys.exit(EXIT_ITEMS_FAILED)
