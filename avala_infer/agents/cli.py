"""``avala-infer dispatcher``: send agents' webhook deliveries from the store, registered on the ``cli`` group of
``avala_infer/cli.py`` by :func:`register`."""

from __future__ import annotations

import signal
import sys

import click

from avala_infer.cli_common import EXIT_ERROR, home_folder, home_option
from avala_infer.errors import AvalaInferError


@click.command("dispatcher")
@home_option
@click.option(
    "--until-idle", is_flag=True, help="Exit when every delivery has succeeded or failed (default: keep polling)."
)
@click.option(
    "--lease", "lease_s", default=30.0, show_default=True, type=click.FloatRange(min=1), help="Delivery lease, s."
)
@click.option("--poll", "poll_s", default=0.5, show_default=True, type=click.FloatRange(min=0.01), help="Idle poll, s.")
@click.option(
    "--timeout",
    "timeout_s",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Request timeout, s.",
)
@click.option(
    "--max-attempts", default=8, show_default=True, type=click.IntRange(1), help="Attempts before a delivery fails."
)
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1), help="Requests at once.")
def dispatcher_command(home, until_idle, lease_s, poll_s, timeout_s, max_attempts, concurrency) -> None:
    """POST agents' webhook deliveries (signed), retrying network errors, 5xx and 429 with backoff.

    Stops on SIGINT/SIGTERM after recording the requests in flight. A dispatcher killed mid-delivery loses
    nothing: the deliveries it held are sent again, with the same delivery id, once their lease runs out.
    Several dispatchers may share one store.
    """
    from avala_infer.agents.dispatcher import Dispatcher

    try:
        dispatcher = Dispatcher(
            home_folder(home),
            concurrency=concurrency,
            lease_s=lease_s,
            poll_s=poll_s,
            timeout_s=timeout_s,
            max_attempts=max_attempts,
        )
    except AvalaInferError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    previous = {
        sig: signal.signal(sig, lambda *_: dispatcher.stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        sent = dispatcher.run(until_idle=until_idle)
    except AvalaInferError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo(f"dispatcher {dispatcher.id}: recorded {sent} attempt(s)", err=True)


def register(group: click.Group) -> None:
    group.add_command(dispatcher_command)
