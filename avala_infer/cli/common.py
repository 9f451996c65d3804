"""What the CLI modules share: exit codes, common options, error mapping, the store client, output helpers,
NAME=VALUE option parsing and the progress bar (of ``label`` and of a watched auto-label job)."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import sys
import time
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
    """``NAME=VALUE`` option values as ``{NAME: convert(VALUE)}`` (``NAME=`` gives None); a bad one is a usage
    error naming ``option``."""
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
    """The store folder: ``--home`` when given, else the default (``AVALA_INFER_HOME``, else
    ``~/.local/share/avala-infer``)."""
    from avala_infer.store import default_home

    return Path(home).expanduser() if home else default_home()


def store_client(home: str | None):
    """The local client over the store, without an in-process worker (worker processes run the jobs)."""
    from avala_infer.client import Avala

    return Avala(home=home_folder(home), worker=False)


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: dataclasses as dicts, datetimes as ISO text."""
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
    """Print ``value`` as indented JSON on stdout."""
    click.echo(json.dumps(plain(value), indent=2, ensure_ascii=False))


def echo_page(page, as_json: bool, header: str, row) -> None:
    """Print a page of a list: JSON (items and next_cursor), or ``header`` and a ``row(item)`` line per item with
    the cursor of the next page on stderr."""
    if as_json:
        echo_json({"items": list(page), "next_cursor": page.next_cursor})
        return
    click.echo(header)
    for item in page:
        click.echo(row(item))
    if page.next_cursor is not None:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


def echo_fields(fields: list[tuple[str, Any]]) -> None:
    """Print ``name: value`` lines, the values aligned."""
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


class ProgressBar:
    """The CLI's one progress display, on stderr: ``[#####.....] 3/10 1.2 items/s`` redrawn in place on a
    terminal; when piped, a plain line every ``interval_s`` seconds (and at the end). The rate counts the items
    done since :meth:`restart` (by default since the bar was made, from 0)."""

    def __init__(self, stream=None, interval_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval_s = interval_s
        self.started = time.monotonic()
        self.base = 0  # the items done when the rate started counting
        self.last_plain = self.started

    def restart(self, done: int) -> None:
        """Count the rate from now, with ``done`` items done already, and print the next plain line at once."""
        self.started, self.base, self.last_plain = time.monotonic(), done, 0.0

    def show(
        self, done: int, total: int | None, failed: int, plain: str, *, finished: bool, now_plain: bool = False
    ) -> None:
        """Draw the bar (terminal) or, when it is time (``finished``, ``now_plain`` or ``interval_s`` since the
        last line), print ``plain`` followed by `` 3/10 items, 1.2 items/s`` (piped)."""
        now = time.monotonic()
        elapsed = now - self.started
        rate = (done - self.base) / elapsed if elapsed > 0 else 0.0
        of = f"/{total}" if total else ""
        failed_text = f", {failed} failed" if failed else ""
        if self.tty:
            width = 30
            filled = int(width * min(done, total) / total) if total else 0
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r[{bar}] {done}{of} {rate:.1f} items/s{failed_text}  ")
            if finished:
                self.stream.write("\n")
            self.stream.flush()
        elif finished or now_plain or now - self.last_plain >= self.interval_s:
            self.last_plain = now
            self.stream.write(f"{plain} {done}{of} items, {rate:.1f} items/s{failed_text}\n")
            self.stream.flush()


class LabelProgress:
    """``label``'s progress: the ``progress`` callback of :func:`avala_infer.label` (done, total, failed)."""

    def __init__(self, stream=None, interval_s: float = 5.0) -> None:
        self.bar = ProgressBar(stream, interval_s)

    def __call__(self, done: int, total: int | None, failed: int) -> None:
        self.bar.show(done, total, failed, "labeled", finished=bool(total and done >= total))


class JobProgress:
    """A job seen from outside (``auto-label watch``, ``create --watch/--run``), called with each polled job: the
    bar of ``label``; while the job is pending, a line saying it waits for a worker (``worker_hint``). The rate
    counts the items processed while watching."""

    def __init__(self, stream=None, interval_s: float = 5.0, worker_hint: bool = True) -> None:
        self.bar = ProgressBar(stream, interval_s)
        self.worker_hint = worker_hint
        self.watching = False
        self.last_status: str | None = None

    def __call__(self, job) -> None:
        if job.status == "pending":
            if self.last_status != "pending" and self.worker_hint:
                self.bar.stream.write(f"job {job.uid} is pending: waiting for a worker (`avala-infer worker`)\n")
                self.bar.stream.flush()
            self.last_status = job.status
            return
        if not self.watching:
            self.watching = True
            self.bar.restart(job.processed_items)
        self.bar.show(
            job.processed_items,
            job.total_items,
            job.failed_items,
            f"job {job.uid} {job.status}:",
            finished=job.status in ("completed", "failed", "cancelled"),
            now_plain=self.last_status != job.status,
        )
        self.last_status = job.status
