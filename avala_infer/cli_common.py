"""What the CLI modules share: exit codes, common options, error mapping, the store client, output helpers and
NAME=VALUE option parsing."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import sys
from pathlib import Path
from typing import Any

import click

from avala_infer.errors import AvalaInferError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_ITEMS_FAILED = 3
EXIT_INTERRUPTED = 130


def pairs(values: tuple[str, ...], option: str, convert=str) -> dict:
    result = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{value!r} is not NAME=VALUE", param_hint=option)
        try:
            result[name.strip()] = convert(rest.strip()) if rest.strip() else None
        except ValueError as exc:
            raise click.BadParameter(f"{value!r}: {exc}", param_hint=option) from exc
    return result


home_option = click.option(
    "--home",
    type=click.Path(file_okay=False),
    default=None,
    help="Store folder (default: AVALA_INFER_HOME, else ~/.local/share/avala-infer).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
limit_option = click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000), help="Page size.")
cursor_option = click.option("--cursor", default=None, help="Start after this cursor (printed under the last page).")


def map_errors(command):
    """AvalaInferError -> ``error: ...`` on stderr and exit 1, as ``avala-infer label`` does."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except AvalaInferError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_ERROR)

    return wrapper


def home_folder(home: str | None) -> Path:
    from avala_infer.store import default_home

    return Path(home).expanduser() if home else default_home()


def store_client(home: str | None):
    """The local client over the store, without an in-process worker (worker processes run the jobs)."""
    from avala_infer.client import Avala

    return Avala(home=home_folder(home), worker=False)


def plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def echo_json(value: Any) -> None:
    click.echo(json.dumps(plain(value), indent=2, ensure_ascii=False))


def echo_page(page, as_json: bool, header: str, row) -> None:
    if as_json:
        echo_json({"items": list(page), "next_cursor": page.next_cursor})
        return
    click.echo(header)
    for item in page:
        click.echo(row(item))
    if page.next_cursor is not None:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


def echo_fields(fields: list[tuple[str, Any]]) -> None:
    for name, value in fields:
        click.echo(f"{name + ':':<22} {'' if value is None else value}")


FORMAT_CHOICES = click.Choice(["jsonl", "coco", "yolo", "labelstudio", "conll", "masks"])


def label_studio_url_options(command):
    """``--ls-root`` and ``--ls-url-prefix``: where Label Studio tasks point for their images (label, export)."""
    command = click.option(
        "--ls-url-prefix",
        default=None,
        metavar="URL",
        help="Label Studio tasks point at URL/<image path relative to --ls-root, default the current folder>.",
    )(command)
    return click.option(
        "--ls-root",
        default=None,
        type=click.Path(file_okay=False),
        help="Label Studio tasks point at /data/local-files/?d=<image path relative to this folder> "
        "(Label Studio's LOCAL_FILES_DOCUMENT_ROOT).",
    )(command)


mask_format_option = click.option(
    "--mask-format",
    default="rle",
    show_default=True,
    type=click.Choice(["rle", "polygon"]),
    help="How COCO holds masks (polygon falls back to RLE for masks with holes).",
)
