"""``avala-infer projects`` (create, optionally from a YAML config; list, show, update), ``import`` and ``tasks
list``: thin calls to the local client.

Every command takes ``--home`` (the store's folder; default ``AVALA_INFER_HOME``, else
``~/.local/share/avala-infer``); those that list or show take ``--json``. Exit codes: 0 done; 1 an error (unknown
project, bad configuration); 2 a usage error; 3 ``import``: sources that could not be imported.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from avala_infer.cli.common import (
    EXIT_ITEMS_FAILED,
    cursor_option,
    echo_fields,
    echo_json,
    echo_page,
    home_option,
    json_option,
    limit_option,
    map_errors,
    pairs,
    store_client,
)
from avala_infer.cli.config_files import load_config


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
@click.argument("name", required=False)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A project config (YAML; see configs/): name, data_type, ontology, models (with label maps). Options "
    "given here override it.",
)
@click.option("--data-type", default=None, type=click.Choice(["image", "text"]), help="image (the default) or text.")
@click.option("--label", "labels", multiple=True, help="An ontology label, in class-id order (repeatable).")
@click.option("--model", "models", multiple=True, metavar="TYPE=MODEL", help="The model serving a model type.")
@map_option
@home_option
@json_option
@map_errors
def projects_create(name, config_file, data_type, labels, models, label_map, home, as_json) -> None:
    """Create project NAME (with its dataset). Labels are the ontology: label k is class id k in every export;
    with none, each model type's first job fills its own. --model object_detection=yolo11n names the model
    for a model type (a model name, spec or weights path; see `avala-infer models list`); an unknown model or
    one of another type is refused. --map person=pedestrian maps the model's labels to the project's (with
    several --model, write --map object_detection:person=pedestrian). With --config, the file gives what the
    options do not (NAME included); --label replaces its ontology, --model and --map its entry of that type."""
    config = load_config(config_file, "project") if config_file else {}
    name = name or config.get("name")
    if not name:
        raise click.UsageError("give the project's NAME (or a --config naming it)")
    models = _models(models)
    file_models = config.get("models", {})
    current = {t: e["model"] if isinstance(e, dict) else e for t, e in file_models.items()}
    entries = {**file_models, **_model_entries(models, _label_maps(label_map, list(models) or list(current)), current)}
    with store_client(home) as client:
        project = client.projects.create(
            name,
            data_type=data_type or config.get("data_type", "image"),
            ontology=list(labels) or config.get("ontology") or [],
            models=entries,
        )
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
    models = _models(models)
    labels = [name.strip() for name in labels]
    if any(not name for name in labels):
        raise click.BadParameter("labels must be non-empty names", param_hint="--label")
    with store_client(home) as client:
        current = client.projects.get(uid).models  # an unknown uid fails before anything changes
        maps = _label_maps(label_map, list(models) or list(current))
        models = _model_entries(models, maps, current)
        if labels:
            client.projects.extend_ontology(uid, labels)
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
