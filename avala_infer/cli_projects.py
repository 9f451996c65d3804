"""``avala-infer`` commands for projects, imports, tasks, auto-label jobs and exports: thin calls to the local
client and the store, registered on the ``cli`` group of ``avala_infer/cli.py``.

Every command takes ``--home`` (the store's folder; default ``AVALA_INFER_HOME``, else
``~/.local/share/avala-infer``); those that list or show take ``--json``. None of them runs jobs in this process,
except ``auto-label create --run``: jobs are run by ``avala-infer worker`` processes.

Exit codes, as for ``label``: 0 done; 1 an error (unknown project or job, bad configuration, a failed job);
2 a usage error; 3 finished with something left undone (``import``: sources that could not be imported;
``auto-label watch``/``create --watch``/``--run``: the job was cancelled, or completed with failed items);
130 interrupted with Ctrl-C (a job run with ``--run`` stays running; the next worker resumes it).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from avala_infer.cli_common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_ITEMS_FAILED,
    EXIT_OK,
    FORMAT_CHOICES,
    cursor_option,
    echo_fields,
    echo_json,
    echo_page,
    home_folder,
    home_option,
    json_option,
    label_studio_url_options,
    limit_option,
    map_errors,
    mask_format_option,
    pairs,
    store_client,
)


def _models(values: tuple[str, ...]) -> dict[str, str]:
    models = pairs(values, "--model")
    empty = [name for name, model in models.items() if not model]
    if empty:
        raise click.BadParameter(f"no model named for {', '.join(empty)}: write TYPE=MODEL", param_hint="--model")
    return models


def _label_maps(values: tuple[str, ...], types: list[str]) -> dict[str, dict[str, str | None]]:
    """``--map`` values as ``{model_type: {model label: project label or None}}``. ``TYPE:FROM=TO`` names the
    model type; a plain ``FROM=TO`` needs exactly one model type in ``types`` (the --model given, else the
    project's only one). ``FROM=`` drops the label."""
    from avala_infer.types import ModelType

    maps: dict[str, dict[str, str | None]] = {}
    for value in values:
        source, sep, target = value.partition("=")
        prefix, colon, label = source.partition(":")
        model_type = None
        if colon:
            try:
                model_type = ModelType.parse(prefix.strip()).value
            except ValueError:
                model_type = None  # a label with a colon in it
        if model_type is None:
            label = source
            if len(types) != 1:
                raise click.BadParameter(
                    f"{value!r}: say which model type it maps ({', '.join(types) or 'none configured'}): "
                    "write TYPE:FROM=TO",
                    param_hint="--map",
                )
            model_type = types[0]
        if not sep or not label.strip():
            raise click.BadParameter(f"{value!r} is not FROM=TO (or FROM= to drop FROM)", param_hint="--map")
        maps.setdefault(model_type, {})[label.strip()] = target.strip() or None
    return maps


def _model_entries(models: dict[str, str], maps: dict[str, dict[str, str | None]], current: dict[str, str]):
    """--model and --map values as the client's ``models`` entries (a map given for a type without --model
    keeps the project's current model of that type)."""
    entries: dict[str, object] = dict(models)
    for model_type, label_map in maps.items():
        model = models.get(model_type, current.get(model_type))
        if model is None:
            raise click.BadParameter(
                f"--map for {model_type}, which has no model: add --model {model_type}=MODEL", param_hint="--map"
            )
        entries[model_type] = {"model": model, "label_map": label_map}
    return entries


map_option = click.option(
    "--map",
    "label_map",
    multiple=True,
    metavar="[TYPE:]FROM=TO",
    help="Map a model label to a project label, as `label --map` (rename, merge; FROM= drops it); TYPE: names "
    "the model type when there are several (repeatable).",
)


# ---------------------------------------------------------------------------------------------------- projects
@click.group("projects")
def projects_group() -> None:
    """Create, list, show and update projects (a label ontology, a model per model type, a dataset of items)."""


def _project_fields(project) -> list[tuple[str, Any]]:
    models = ", ".join(f"{t}={m}" for t, m in project.models.items()) or "none (projects update --model TYPE=MODEL)"
    ontology = ", ".join(f"{i}:{name}" for i, name in enumerate(project.ontology)) or "empty (set by the first job)"
    per_type = [
        (f"ontology[{t}]", ", ".join(f"{i}:{name}" for i, name in enumerate(labels)) or "empty (set by its first job)")
        for t, labels in project.ontologies.items()
    ]
    maps = [
        (f"label_map[{t}]", ", ".join(f"{k}->{v if v is not None else '(dropped)'}" for k, v in label_map.items()))
        for t, label_map in project.label_maps.items()
    ]
    one_list = len({tuple(labels) for labels in project.ontologies.values()}) <= 1
    return [
        ("uid", project.uid),
        ("name", project.name),
        ("data_type", project.data_type),
        ("status", project.status),
        ("models", models),
        *maps,
        *([("ontology", ontology)] if one_list else per_type),
        ("dataset", project.dataset),
        ("tasks", project.task_count),
        ("created_at", project.created_at),
        ("updated_at", project.updated_at),
    ]


@projects_group.command("create")
@click.argument("name")
@click.option("--data-type", default="image", show_default=True, type=click.Choice(["image", "text"]))
@click.option("--label", "labels", multiple=True, help="An ontology label, in class-id order (repeatable).")
@click.option("--model", "models", multiple=True, metavar="TYPE=MODEL", help="The model serving a model type.")
@map_option
@home_option
@json_option
@map_errors
def projects_create(name, data_type, labels, models, label_map, home, as_json) -> None:
    """Create project NAME (with its dataset). Labels are the ontology: label k is class id k in every export;
    with none, each model type's first job fills its own. --model object_detection=yolo11n names the model
    for a model type (a model name, spec or weights path; see `avala-infer models list`); an unknown model or
    one of another type is refused. --map person=pedestrian maps the model's labels to the project's (with
    several --model, write --map object_detection:person=pedestrian)."""
    models = _models(models)
    entries = _model_entries(models, _label_maps(label_map, list(models)), {})
    with store_client(home) as client:
        project = client.projects.create(name, data_type=data_type, ontology=list(labels), models=entries)
    if as_json:
        echo_json(project)
    else:
        echo_fields(_project_fields(project))


@projects_group.command("list")
@limit_option
@cursor_option
@home_option
@json_option
@map_errors
def projects_list(limit, cursor, home, as_json) -> None:
    """The projects in the store, oldest first."""
    with store_client(home) as client:
        page = client.projects.list(limit=limit, cursor=cursor)
        page.items = [client.projects.get(p.uid) for p in page]  # with their task counts
    echo_page(
        page,
        as_json,
        f"{'UID':<22} {'NAME':<24} {'TYPE':<6} {'TASKS':>7} {'LABELS':>6}  MODELS",
        lambda p: (
            f"{p.uid:<22} {p.name:<24} {p.data_type:<6} {p.task_count:>7} {len(p.ontology):>6}  "
            + (", ".join(f"{t}={m}" for t, m in p.models.items()) or "-")
        ),
    )


@projects_group.command("show")
@click.argument("uid")
@home_option
@json_option
@map_errors
def projects_show(uid, home, as_json) -> None:
    """One project: its models, ontology (with class ids) and task count."""
    with store_client(home) as client:
        project = client.projects.get(uid)
    if as_json:
        echo_json(project)
    else:
        echo_fields(_project_fields(project))


@projects_group.command("update")
@click.argument("uid")
@click.option("--name", default=None, help="A new name.")
@click.option("--label", "labels", multiple=True, help="A label to append to the ontology (repeatable).")
@click.option("--model", "models", multiple=True, metavar="TYPE=MODEL", help="Set the model of a model type.")
@map_option
@home_option
@json_option
@map_errors
def projects_update(uid, name, labels, models, label_map, home, as_json) -> None:
    """Rename a project, append labels to its ontology (ids of existing labels never change) or set the model
    serving a model type (other model types keep theirs). --map sets the label map of the --model given (or of
    the project's only model type; TYPE:FROM=TO names one); --model without --map clears that type's map."""
    from avala_infer.store import Store

    models = _models(models)
    labels = [name.strip() for name in labels]
    if any(not name for name in labels):
        raise click.BadParameter("labels must be non-empty names", param_hint="--label")
    with store_client(home) as client:
        current = client.projects.get(uid).models  # an unknown uid fails before anything changes
        maps = _label_maps(label_map, list(models) or list(current))
        models = _model_entries(models, maps, current)
        if labels:
            store = Store(client.home)
            try:
                store.extend_ontology(uid, labels)
            finally:
                store.close()
        project = client.projects.update(uid, name=name, models=models or None)
    if as_json:
        echo_json(project)
    else:
        echo_fields(_project_fields(project))


# ---------------------------------------------------------------------------------------------------- import
@click.command("import")
@click.argument("project")
@click.argument("sources", nargs=-1)
@click.option("--text", "texts", multiple=True, metavar="TEXT", help="A literal text to import (text projects).")
@click.option("--text-field", default="text", show_default=True, help="JSONL field / CSV column holding the text.")
@click.option("--per-line", is_flag=True, help="One item per non-empty line of .txt files (else one per file).")
@home_option
@json_option
@map_errors
def import_command(project, sources, texts, text_field, per_line, home, as_json) -> None:
    """Import SOURCES into PROJECT's dataset, a task per item: image files, folders (searched recursively),
    globs, and manifests (.txt of paths, .jsonl/.csv with a path field); for a text project, text files
    (.txt whole or --per-line, .jsonl/.csv with --text-field) and --text strings. Importing the same files again
    adds nothing. Exits 3 when some sources could not be imported (they are listed)."""
    from avala_infer.types import Text

    if not sources and not texts:
        raise click.UsageError("give SOURCES (files, folders, globs or manifests) or --text")
    with store_client(home) as client:
        if texts and client.projects.get(project).data_type != "text":
            raise click.UsageError(f"--text is for text projects; project {project} holds images")
        report = client.projects.import_items(
            project, [*sources, *(Text(t) for t in texts)], text_field=text_field, per_line=per_line
        )
    if as_json:
        echo_json(report)
    else:
        click.echo(f"{report.created} created, {report.existing} existing, {report.failed_count} failed")
    for failure in report.failed:
        click.echo(f"  failed: {failure['source']}: {failure['error']}", err=True)
    if report.failed_count > len(report.failed):
        click.echo(f"  ... and {report.failed_count - len(report.failed)} more", err=True)
    if report.failed_count:
        sys.exit(EXIT_ITEMS_FAILED)


# ---------------------------------------------------------------------------------------------------- tasks
@click.group("tasks")
def tasks_group() -> None:
    """The tasks of a project (one per item)."""


@tasks_group.command("list")
@click.argument("project")
@click.option(
    "--status",
    default=None,
    type=click.Choice(["pending", "labeled", "completed", "reviewed", "rejected"]),
    help="Only tasks with this status.",
)
@limit_option
@cursor_option
@home_option
@json_option
@map_errors
def tasks_list(project, status, limit, cursor, home, as_json) -> None:
    """PROJECT's tasks in import order: pending until a job labels them (labeled: automatic drafts exist)."""
    with store_client(home) as client:
        client.projects.get(project)
        page = client.tasks.list(project=project, status=status, limit=limit, cursor=cursor)
    echo_page(page, as_json, f"{'UID':<22} {'STATUS':<9} NAME", lambda t: f"{t.uid:<22} {t.status:<9} {t.name}")


# ---------------------------------------------------------------------------------------------------- jobs
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


class JobProgress:
    """The ``label`` command's progress style for a job seen from outside: a bar with items/s on a terminal,
    a plain line every few seconds when piped. The rate counts the items processed while watching."""

    def __init__(self, stream=None, interval_s: float = 5.0, worker_hint: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.worker_hint = worker_hint
        self.tty = self.stream.isatty()
        self.interval_s = interval_s
        self.first: tuple[float, int] | None = None
        self.last_plain = 0.0
        self.last_status: str | None = None

    def __call__(self, job) -> None:
        now = time.monotonic()
        done, total, failed = job.processed_items, job.total_items, job.failed_items
        if job.status == "pending":
            if self.last_status != "pending" and self.worker_hint:
                self.stream.write(f"job {job.uid} is pending: waiting for a worker (`avala-infer worker`)\n")
                self.stream.flush()
            self.last_status = job.status
            return
        if self.first is None:
            self.first = (now, done)
        elapsed = now - self.first[0]
        rate = (done - self.first[1]) / elapsed if elapsed > 0 else 0.0
        of = f"/{total}" if total else ""
        failed_text = f", {failed} failed" if failed else ""
        finished = job.status in ("completed", "failed", "cancelled")
        if self.tty:
            width = 30
            filled = int(width * min(done, total) / total) if total else 0
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r[{bar}] {done}{of} {rate:.1f} items/s{failed_text}  ")
            if finished:
                self.stream.write("\n")
            self.stream.flush()
        elif finished or self.last_status != job.status or now - self.last_plain >= self.interval_s:
            self.last_plain = now
            self.stream.write(f"job {job.uid} {job.status}: {done}{of} items, {rate:.1f} items/s{failed_text}\n")
            self.stream.flush()
        self.last_status = job.status


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
    """``auto-label create --run``: this one job, run on a thread of this process with its own connection."""

    def __init__(self, home: Path, uid: str, device: str) -> None:
        self.home, self.uid, self.device = home, uid, device
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="avala-infer-run", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from avala_infer.jobs import JobRunner
        from avala_infer.store import Store, worker_id

        try:
            with Store(self.home) as store, JobRunner(store, worker_id(), device=self.device) as runner:
                job = store.claim_job(runner.worker, runner.lease_s, only=self.uid)
                if job is not None:  # else another worker holds it: then we only watch
                    runner.run(job, self.stopping.is_set)
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
@click.option("--model-type", default=None, help="Which of the project's models (default: its only one).")
@click.option("--confidence", default=None, type=click.FloatRange(0, 1), help="Minimum score (default 0.25).")
@click.option("--labels", default=None, help="Keep only these labels, comma-separated (default: the ontology).")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Label every task again, even those holding a result of this model made with the same settings.",
)
@click.option("--dry-run", is_flag=True, help="Write previews into the job's folder only; results stay untouched.")
@click.option(
    "--aggregation",
    default=None,
    type=click.Choice(["none", "simple", "first", "average", "max"]),
    help="NER jobs: how tokens become entities (default first: whole words; as transformers' aggregation_strategy).",
)
@click.option("--watch", is_flag=True, help="Show a progress bar until the job ends (exit code as `watch`).")
@click.option("--run", "run_here", is_flag=True, help="Run the job in this process now, with a progress bar.")
@click.option("-d", "--device", default="auto", show_default=True, help="Device for --run: auto, cpu, cuda[:N].")
@click.option("--interval", default=0.5, show_default=True, type=click.FloatRange(0.05), help="Poll every s.")
@home_option
@json_option
@map_errors
def jobs_create(
    project,
    model_type,
    confidence,
    labels,
    overwrite,
    dry_run,
    aggregation,
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
    with store_client(home) as client:
        job = client.auto_label_jobs.create(
            project,
            model_type=model_type,
            confidence_threshold=confidence,
            labels=[x.strip() for x in labels.split(",") if x.strip()] if labels else None,
            dry_run=dry_run,
            aggregation=aggregation,
            overwrite=overwrite,
        )
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
        foreground = _ForegroundRun(client.home, job.uid, device) if run_here else None
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


# ---------------------------------------------------------------------------------------------------- export
@click.command("export")
@click.argument("project")
@click.option(
    "-f",
    "--format",
    "formats",
    multiple=True,
    required=True,
    type=FORMAT_CHOICES,
    help="Output format (repeatable; which ones suit a model type: see the README).",
)
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--model-type", default=None, help="Whose results (needed when the project has several kinds).")
@click.option("--model", default=None, help="Only the results of this model (default: each task's newest).")
@click.option("--job", default=None, metavar="UID", help="The results of this job (default: each task's newest).")
@mask_format_option
@label_studio_url_options
@home_option
@map_errors
def export_command(project, formats, out, model_type, model, job, mask_format, ls_root, ls_url_prefix, home) -> None:
    """Write PROJECT's results (the automatic drafts in the store) as annotation files in --out. Class ids are
    the project's ontology positions, stable across jobs and exports; items without results are left out.
    Each item's newest result (of the latest job that labeled it, or kept its identical result), or --job's."""
    from avala_infer.projects.exports import export_project
    from avala_infer.store import Store

    store = Store(home_folder(home))
    try:
        store.get_project(project)
        files = export_project(
            store, project, out, formats, model_type, mask_format, model=model, job=job, ls_root=ls_root,
            ls_url_prefix=ls_url_prefix,
        )  # fmt: skip
    finally:
        store.close()
    for path in files:
        click.echo(str(path))


def register(group: click.Group) -> None:
    """Add these commands to ``group`` (the ``avala-infer`` group)."""
    for command in (projects_group, import_command, tasks_group, auto_label_group, export_command):
        group.add_command(command)
