"""The ``avala-infer`` command: parse, call the library, format, map errors to exit codes.

Exit codes: 0 every item labeled; 1 an error stopped the run (bad model, spec, weights, labels...);
2 a usage error (click's convention); 3 the run finished but some items failed (listed in
``OUT/failures.jsonl`` and summarised on stderr). Importing this module imports no torch.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import click

from avala_infer.cli_common import (  # noqa: F401  (EXIT_* are the documented exit codes)
    EXIT_ERROR,
    EXIT_ITEMS_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    FORMAT_CHOICES,
    home_folder,
    home_option,
    label_studio_url_options,
    mask_format_option,
)
from avala_infer.cli_common import pairs as _pairs
from avala_infer.errors import AvalaInferError

log = logging.getLogger("avala_infer")


class Progress:
    """A one-line progress bar with items/s on a terminal; a plain line every few seconds when piped."""

    def __init__(self, stream=None, interval_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval_s = interval_s
        self.started = time.monotonic()
        self.last_plain = self.started

    def __call__(self, done: int, total: int | None, failed: int) -> None:
        now = time.monotonic()
        rate = done / max(now - self.started, 1e-9)
        of = f"/{total}" if total else ""
        failed_text = f", {failed} failed" if failed else ""
        if self.tty:
            width = 30
            filled = int(width * done / total) if total else 0
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r[{bar}] {done}{of} {rate:.1f} items/s{failed_text}  ")
            if total and done >= total:
                self.stream.write("\n")
            self.stream.flush()
        elif now - self.last_plain >= self.interval_s or (total and done >= total):
            self.last_plain = now
            self.stream.write(f"labeled {done}{of} items, {rate:.1f} items/s{failed_text}\n")
            self.stream.flush()


class StatusLine(logging.Handler):
    """Shows the ``avala_infer.status`` logger on stderr as one line per step: a step that starts
    ("loading yolo11n on cpu ...") is finished on the same line by the record that ends it ("done in 0.4 s")."""

    def __init__(self, stream=None) -> None:
        super().__init__(logging.INFO)
        self.stream = stream
        self.open = False  # a started line waits for its end

    def emit(self, record: logging.LogRecord) -> None:
        stream = self.stream or sys.stderr
        try:
            kind = getattr(record, "status", None)
            if kind == "done" and self.open:
                text = f" done in {record.s:.1f} s\n" if hasattr(record, "s") else " done\n"
            else:
                text = ("\n" if self.open else "") + record.getMessage() + ("" if kind == "start" else "\n")
            self.open = kind == "start"
            stream.write(text)
            stream.flush()
        except Exception:
            self.handleError(record)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="avala-infer")
def cli(verbose: int) -> None:
    """avala-infer: local auto-labeling on your own GPU hosts."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    status = logging.getLogger("avala_infer.status")  # "loading yolo11n on cpu ... done in 0.4 s"
    if not any(isinstance(h, StatusLine) for h in status.handlers):
        status.addHandler(StatusLine())
    status.setLevel(logging.INFO)
    status.propagate = False


@cli.command("label")
@click.argument("sources", nargs=-1)
@click.option("-m", "--model", required=True, help="Model name (see `models list`), spec .yaml, or .pt/.onnx path.")
@click.option("--confidence", default=0.25, show_default=True, type=click.FloatRange(0, 1), help="Minimum score.")
@click.option("--iou", default=0.7, show_default=True, type=click.FloatRange(0, 1), help="NMS IoU threshold.")
@click.option("--labels", default=None, help="Keep only these labels, comma-separated (e.g. car,truck).")
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
@click.option("--max-det", default=300, show_default=True, type=click.IntRange(1), help="Max boxes per image.")
@click.option("-d", "--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
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
    max_det,
    device,
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
            labels=[x for x in labels.split(",")] if labels else None,
            label_thresholds=_pairs(label_thresholds, "--label-threshold", float),
            label_map=_pairs(label_map, "--map"),
            max_det=max_det,
            top_k=top_k,
            aggregation=aggregation,
            text_field=text_field,
            per_line=per_line,
            device=device,
            batch_size=batch_size,
            input_size=input_size,
            progress=Progress(),
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


@cli.group("models")
def models_group() -> None:
    """List, inspect, add and pull models."""


def _model_rows() -> list[dict]:
    """One row per model name the spec folders answer to (the first spec of a name wins), broken specs included
    with their problem."""
    from avala_infer.specs import scan_specs, weights_present

    rows: dict[str, dict] = {}
    for found in scan_specs():
        if found.name in rows:
            continue
        spec = found.spec
        path = weights_present(spec) if spec is not None else None
        rows[found.name] = {
            "name": found.name,
            "model_type": spec.model_type.value if spec else None,
            "backend": spec.backend if spec else None,
            "weights": spec.weights if spec else None,
            "weights_path": str(path) if path else None,
            "spec": str(found.path),
            "problem": str(found.error) if found.error else None,
        }
    return list(rows.values())


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_list(as_json: bool) -> None:
    """Every model spec found, whether its weights are present, and the problem of any spec that cannot be read."""
    try:
        rows = _model_rows()
    except AvalaInferError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'NAME':<24} {'MODEL TYPE':<26} {'BACKEND':<12} WEIGHTS")
    for row in rows:
        if row["problem"]:
            problem = " ".join(row["problem"].split())  # one line (YAML errors span several)
            click.echo(f"{row['name']:<24} {'BROKEN SPEC':<26} {'-':<12} {problem}")
            continue
        state = row["weights_path"] or f"missing ({row['weights']})"
        click.echo(f"{row['name']:<24} {row['model_type']:<26} {row['backend']:<12} {state}")


@models_group.command("add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--force", is_flag=True, help="Replace a different file of the same name in the model folder.")
def models_add(file: str, force: bool) -> None:
    """Trust FILE (a .pt runs code when loaded): copy it into the user model folder and record its sha256.

    Then `-m NAME.pt` (or the printed path) loads it without --trust-weights, as long as its hash is unchanged.
    """
    from avala_infer.trust import add_weights

    try:
        target, digest = add_weights(file, force=force)
    except AvalaInferError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"added {target} (sha256 {digest}); use it with: avala-infer label -m {target.name} ...")


@models_group.command("pull")
@click.argument("name")
@click.option(
    "--mirror",
    default=None,
    metavar="URL",
    help="Fetch from this base URL + the file name instead of the spec's url (env AVALA_INFER_MIRROR).",
)
@click.option("--force", is_flag=True, help="Fetch even when the weights are present already.")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, type=click.FloatRange(1), help="Per read, s.")
def models_pull(name: str, mirror: str | None, force: bool, timeout_s: float) -> None:
    """Fetch model NAME's weights from the url: in its spec into the user model folder (the only download
    avala-infer makes). Does nothing when they are present already (e.g. in AVALA_INFER_MODELS). A sha256: in
    the spec is checked before the file is stored."""
    from avala_infer.pull import pull

    shown = {"last": -1}

    def progress(received: int, total: int | None) -> None:
        if not sys.stderr.isatty():
            return
        mib = received >> 20
        if mib != shown["last"] or received == total:
            shown["last"] = mib
            of = f"/{total / 2**20:.1f}" if total else ""
            click.echo(f"\r  {received / 2**20:.1f}{of} MiB", err=True, nl=False)

    try:
        result = pull(name, mirror=mirror, force=force, timeout_s=timeout_s, progress=progress)
    except AvalaInferError as exc:
        if shown["last"] >= 0:
            click.echo("", err=True)
        raise click.ClickException(str(exc)) from exc
    if shown["last"] >= 0:
        click.echo("", err=True)
    if not result.downloaded:
        click.echo(f"{result.name}: weights present at {result.path}; nothing to pull")
        return
    check = "matches the spec's" if result.pinned else "not pinned by the spec"
    click.echo(f"pulled {result.name} from {result.url} into {result.path} (sha256 {result.sha256}, {check})")


@models_group.command("show")
@click.argument("name")
def models_show(name: str) -> None:
    """One model spec in full, with where its weights are (or where to put them)."""
    import dataclasses

    from avala_infer.errors import WeightsNotFoundError
    from avala_infer.specs import find_spec, resolve_weights

    try:
        spec = find_spec(name)
    except AvalaInferError as exc:
        raise click.ClickException(str(exc)) from exc
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        value = value.value if hasattr(value, "value") else value
        if isinstance(value, tuple):
            value = f"{len(value)} labels: " + ", ".join(value)
        click.echo(f"{field.name + ':':<14} {value}")
    try:
        click.echo(f"{'weights_path:':<14} {resolve_weights(spec)}")
    except WeightsNotFoundError as exc:
        click.echo(f"{'weights_path:':<14} MISSING\n{exc}")


@cli.command("worker")
@home_option
@click.option("-d", "--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--until-idle", is_flag=True, help="Exit when no job is waiting (default: keep polling).")
@click.option("--lease", "lease_s", default=60.0, show_default=True, type=click.FloatRange(1), help="Job lease, s.")
@click.option("--poll", "poll_s", default=1.0, show_default=True, type=click.FloatRange(0.05), help="Idle poll, s.")
@click.option("--dispatch/--no-dispatch", default=True, show_default=True, help="Also send agents' webhooks.")
def worker_command(home, device, until_idle, lease_s, poll_s, dispatch) -> None:
    """Run auto-label jobs from the store: pending ones, and running ones whose worker died (resumed).

    Stops after the batch in flight on SIGINT/SIGTERM; the job it held stays running and is resumed by the next
    worker. Several workers may share one store.
    """
    import signal

    from avala_infer.jobs import Worker

    worker = Worker(home_folder(home), device=device, lease_s=lease_s, poll_s=poll_s, dispatch=dispatch)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stopping.set())
    try:
        ran = worker.run(until_idle=until_idle)
    except AvalaInferError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    click.echo(f"worker {worker.id}: ran {ran} job(s)", err=True)


from avala_infer.cli_projects import register  # noqa: E402  (projects, import, tasks, auto-label, export)

register(cli)

from avala_infer.cli_agents import register as register_agents  # noqa: E402  (agents, results, task reviews)

register_agents(cli)

from avala_infer.agents.cli import register as register_dispatcher  # noqa: E402  (dispatcher)

register_dispatcher(cli)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
