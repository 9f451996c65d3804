"""``avala-infer auto-label``: create (optionally from a YAML config, and run in the foreground with ``--run``),
get, list, cancel and watch auto-label jobs, through the client.

Jobs are run by ``avala-infer worker`` processes, except with ``auto-label create --run``: then the client runs
that one job in this process (``client.auto_label_jobs.run``) while this command watches it.

Exit codes: 0 done; 1 an error (unknown project or job, bad configuration, a failed job); 2 a usage error;
3 ``watch``/``create --watch``/``--run``: the job was cancelled, or completed with failed items; 130 interrupted
with Ctrl-C (a job run with ``--run`` stays running; the next worker resumes it).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import click

from avala_infer.cli.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_ITEMS_FAILED,
    EXIT_OK,
    JobProgress,
    cursor_option,
    echo_fields,
    echo_json,
    echo_page,
    home_option,
    json_option,
    limit_option,
    map_errors,
    store_client,
)
from avala_infer.cli.config_files import load_config


@click.group("auto-label")
def auto_label_group() -> None:
    """Auto-label jobs: create, get, list, cancel, watch. Worker processes run them (`avala-infer worker`)."""


def _job_fields(job) -> list[tuple[str, Any]]:
    summary = job.summary or {}
    fields = [
        ("uid", job.uid),
        ("status", job.status),
        ("project", job.project),
        ("model_type", job.model_type),
        ("model", job.model),
        ("confidence_threshold", job.confidence_threshold),
        ("labels", ", ".join(job.labels) or "(the project's ontology)"),
        ("dry_run", job.dry_run),
        ("attempts", job.attempts),
        ("progress", f"{job.progress_pct:.1f}% ({job.processed_items}/{job.total_items} items)"),
        ("successful_items", job.successful_items),
        ("failed_items", job.failed_items),
        ("skipped_items", job.skipped_items),
        ("error_message", job.error_message),
        ("created_at", job.created_at),
        ("started_at", job.started_at),
        ("completed_at", job.completed_at),
    ]
    if job.model_type == "named_entity_recognition":
        fields.insert(7, ("aggregation", job.aggregation or "first (the default)"))
    if summary:
        per_label = ", ".join(f"{k}={v}" for k, v in summary.get("per_label", {}).items()) or "none"
        fields += [("per_label", per_label), ("throughput", f"{summary.get('throughput_items_per_s')} items/s")]
        if summary.get("preview"):
            fields.append(("preview", summary["preview"]))
    return fields


def _exit_code(job) -> int:
    if job.status == "completed":
        return EXIT_ITEMS_FAILED if job.failed_items else EXIT_OK
    return EXIT_ERROR if job.status == "failed" else EXIT_ITEMS_FAILED


def _echo_failures(job, err: bool) -> None:
    """The reasons of the job's failed items (the first 10), as `watch` and `get` show them."""
    for failure in (job.summary or {}).get("failures", [])[:10]:
        click.echo(f"  failed: {failure.get('key')}: {failure.get('error')}", err=err)
    if job.failed_items > 10:
        click.echo(f"  ... and {job.failed_items - 10} more", err=err)


def _report_end(job) -> None:
    text = (
        f"job {job.uid} {job.status}: {job.processed_items}/{job.total_items} items, {job.successful_items} "
        f"succeeded, {job.failed_items} failed, {job.skipped_items} skipped"
    )
    click.echo(text, err=True)
    if job.status == "failed":
        click.echo(f"error: {job.error_message}", err=True)
    _echo_failures(job, err=True)
    if (job.summary or {}).get("preview"):
        click.echo(f"preview: {job.summary['preview']}", err=True)


class _ForegroundRun:
    """``auto-label create --run``: this one job, run by the client (``client.auto_label_jobs.run``) on a thread of
    this process, while the main thread watches it and takes Ctrl-C."""

    def __init__(self, client, uid: str, device: str) -> None:
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, args=(client, uid, device), name="avala-infer-run", daemon=True
        )
        self.thread.start()

    def _run(self, client, uid: str, device: str) -> None:
        try:
            client.auto_label_jobs.run(uid, device=device, should_stop=self.stopping.is_set)
        except BaseException as exc:  # reported by the watching thread
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


def _watch(client, uid: str, interval_s: float, foreground: _ForegroundRun | None = None, as_json: bool = False):
    progress = JobProgress(worker_hint=foreground is None)
    try:
        while True:
            job = client.auto_label_jobs.get(uid)
            progress(job)
            if job.status in ("completed", "failed", "cancelled"):
                break
            if foreground is not None and not foreground.thread.is_alive() and foreground.error is not None:
                raise foreground.error
            time.sleep(interval_s)
    except KeyboardInterrupt:
        if foreground is not None:
            click.echo("\nstopping after the batch in flight...", err=True)
            foreground.stop()
            click.echo(f"job {uid} stays running; `avala-infer worker` resumes it", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if foreground is not None:
        foreground.thread.join()
    if as_json:
        echo_json(job)
    _report_end(job)
    sys.exit(_exit_code(job))


@auto_label_group.command("create")
@click.argument("project")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A job config (YAML; see configs/): model_type, confidence_threshold, labels, dry_run, aggregation, "
    "overwrite. Options given here override it.",
)
@click.option("--model-type", default=None, help="Which of the project's models (default: its only one).")
@click.option("--confidence", default=None, type=click.FloatRange(0, 1), help="Minimum score (default 0.25).")
@click.option("--labels", default=None, help="Keep only these labels, comma-separated (default: the ontology).")
@click.option(
    "--overwrite/--no-overwrite",
    default=None,
    help="Label every task again, even those holding a result of this model made with the same settings.",
)
@click.option(
    "--dry-run/--no-dry-run",
    default=None,
    help="Write previews into the job's folder only; results stay untouched.",
)
@click.option(
    "--aggregation",
    default=None,
    type=click.Choice(["none", "simple", "first", "average", "max"]),
    help="NER jobs: how tokens become entities (default first: whole words; as transformers' aggregation_strategy).",
)
@click.option(
    "--executor",
    default=None,
    type=click.Choice(["local", "ray"]),
    help="Where its predictions run, whichever worker takes it: local (the worker's engine) or ray (actors of a Ray "
    "cluster; pip install 'avala-infer[ray]'). Default: the worker's --executor.",
)
@click.option("--watch", is_flag=True, help="Show a progress bar until the job ends (exit code as `watch`).")
@click.option("--run", "run_here", is_flag=True, help="Run the job in this process now, with a progress bar.")
@click.option(
    "-d", "--device", default="auto", show_default=True, help="Device for --run: auto, cpu, cuda[:N], cuda:0,1 or all."
)
@click.option("--interval", default=0.5, show_default=True, type=click.FloatRange(0.05), help="Poll every s.")
@home_option
@json_option
@map_errors
def jobs_create(
    project,
    config_file,
    model_type,
    confidence,
    labels,
    overwrite,
    dry_run,
    aggregation,
    executor,
    watch,
    run_here,
    device,
    interval,
    home,
    as_json,
):
    """Queue an auto-label job over PROJECT's tasks, labeled by the project's model for --model-type.

    Tasks that hold a result of the same model made with the same settings (threshold, labels, label map,
    aggregation) are skipped; other settings label every task again (--overwrite: even the same settings).
    --labels the model (after the project's --map) and the ontology do not know are refused, with close matches.

    A worker process runs it (`avala-infer worker --home H`). With --run this command runs it itself, in the
    foreground, without a separate worker (Ctrl-C stops it after the batch in flight; it stays running and the
    next worker resumes it), then exits as `auto-label watch` does.
    """
    settings = load_config(config_file, "job") if config_file else {}
    given = {
        "model_type": model_type,
        "confidence_threshold": confidence,
        "labels": [x.strip() for x in labels.split(",") if x.strip()] if labels else None,
        "dry_run": dry_run,
        "aggregation": aggregation,
        "overwrite": overwrite,
        "executor": executor,
    }
    settings.update({key: value for key, value in given.items() if value is not None})
    with store_client(home) as client:
        job = client.auto_label_jobs.create(project, **settings)
        if not (watch or run_here):
            if as_json:
                echo_json(job)
            else:
                click.echo(job.uid)
                click.echo(
                    f"job {job.uid} pending: {job.model_type} with {job.model} over {job.total_items} tasks",
                    err=True,
                )
            return
        click.echo(f"job {job.uid}: {job.model_type} with {job.model} over {job.total_items} tasks", err=True)
        foreground = _ForegroundRun(client, job.uid, device) if run_here else None
        _watch(client, job.uid, interval, foreground, as_json)


@auto_label_group.command("get")
@click.argument("uid")
@home_option
@json_option
@map_errors
def jobs_get(uid, home, as_json) -> None:
    """One job: status, counters, progress, attempts (how many times a worker took it up: more than 1 after a
    takeover), error and summary (per-label counts, throughput)."""
    with store_client(home) as client:
        job = client.auto_label_jobs.get(uid)
    if as_json:
        echo_json(job)
    else:
        echo_fields(_job_fields(job))
        _echo_failures(job, err=False)  # the reasons, as `watch` lists them


@auto_label_group.command("list")
@click.option("--project", default=None, help="Only this project's jobs.")
@limit_option
@cursor_option
@home_option
@json_option
@map_errors
def jobs_list(project, limit, cursor, home, as_json) -> None:
    """Jobs, oldest first."""
    with store_client(home) as client:
        page = client.auto_label_jobs.list(project=project, limit=limit, cursor=cursor)
    echo_page(
        page,
        as_json,
        f"{'UID':<21} {'PROJECT':<22} {'MODEL TYPE':<24} {'STATUS':<9} {'PROGRESS':>8}  OK/FAILED/SKIPPED",
        lambda j: (
            f"{j.uid:<21} {j.project:<22} {j.model_type:<24} {j.status:<9} {j.progress_pct:>7.1f}%  "
            f"{j.successful_items}/{j.failed_items}/{j.skipped_items}"
        ),
    )


@auto_label_group.command("cancel")
@click.argument("uid")
@home_option
@json_option
@map_errors
def jobs_cancel(uid, home, as_json) -> None:
    """Cancel a job: a pending one at once, a running one when its worker next commits (within one batch)."""
    with store_client(home) as client:
        client.auto_label_jobs.cancel(uid)
        job = client.auto_label_jobs.get(uid)
    if as_json:
        echo_json(job)
    elif job.status == "cancelled":
        click.echo(f"job {uid} cancelled")
    else:
        click.echo(f"job {uid}: cancel requested; its worker stops within one batch")


@auto_label_group.command("watch")
@click.argument("uid")
@click.option("--interval", default=0.5, show_default=True, type=click.FloatRange(0.05), help="Poll every s.")
@home_option
@json_option
@map_errors
def jobs_watch(uid, interval, home, as_json) -> None:
    """Show a live progress bar until job UID ends. Exits 0 when it completed with every item labeled, 1 when it
    failed, 3 when it was cancelled or completed with failed items (their reasons are listed)."""
    with store_client(home) as client:
        _watch(client, uid, interval, as_json=as_json)
