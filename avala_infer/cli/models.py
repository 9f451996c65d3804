"""``avala-infer models``: list, show, add (trust a weights file) and pull models."""

from __future__ import annotations

import json
import sys

import click

from avala_infer.errors import AvalaInferError


@click.group("models")
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
