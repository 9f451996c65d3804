"""``avala-infer export``: write a project's stored results (the automatic drafts) as annotation files, through
the client (``client.projects.export``)."""

from __future__ import annotations

import click

from avala_infer.cli.common import (
    FORMAT_CHOICES,
    home_option,
    label_studio_url_options,
    map_errors,
    mask_format_option,
    store_client,
)


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
    with store_client(home) as client:
        client.projects.get(project)  # an unknown project fails before anything is written
        files = client.projects.export(
            project, out, formats, model_type=model_type, model=model, mask_format=mask_format, job=job,
            ls_root=ls_root, ls_url_prefix=ls_url_prefix,
        )  # fmt: skip
    for path in files:
        click.echo(str(path))
