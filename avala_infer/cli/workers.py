"""The long-running services: ``avala-infer worker`` (runs auto-label jobs from the store) and ``avala-infer
dispatcher`` (sends agents' webhook deliveries). Each builds its service (``jobs.Worker``,
``agents.Dispatcher``) over the store folder and runs it until stopped (SIGINT/SIGTERM) or idle."""

from __future__ import annotations

import signal
import sys
import threading

import click

from avala_infer.cli.common import EXIT_ERROR, home_folder, home_option
from avala_infer.errors import AvalaInferError


@click.command("worker")
@home_option
@click.option("-d", "--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N, cuda:0,1 or all.")
@click.option("--until-idle", is_flag=True, help="Exit when no job is waiting (default: keep polling).")
@click.option("--lease", "lease_s", default=60.0, show_default=True, type=click.FloatRange(1), help="Job lease, s.")
@click.option("--poll", "poll_s", default=1.0, show_default=True, type=click.FloatRange(0.05), help="Idle poll, s.")
@click.option("--dispatch/--no-dispatch", default=True, show_default=True, help="Also send agents' webhooks.")
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where predictions run: this process, or actors of a Ray cluster (pip install 'avala-infer[ray]').",
)
@click.option("--address", default=None, help="Ray cluster: auto, HOST:PORT or ray://HOST:10001 (else RAY_ADDRESS).")
@click.option(
    "--concurrency", type=click.IntRange(1), default=None, help="Ray actors (default: one per GPU, else per CPU)."
)
def worker_command(home, device, until_idle, lease_s, poll_s, dispatch, executor, address, concurrency) -> None:
    """Run auto-label jobs from the store: pending ones, and running ones whose worker died (resumed).

    Stops after the batch in flight on SIGINT/SIGTERM; the job it held stays running and is resumed by the next
    worker. Several workers may share one store. With --executor ray this process is the Ray driver: the
    actors predict, this process alone writes the store (--device then picks the actors' device).
    """
    from avala_infer.jobs import Worker

    if executor == "local" and (address is not None or concurrency is not None):
        raise click.UsageError("--address and --concurrency apply to --executor ray only")
    # a SIGINT/SIGTERM while the worker starts (its imports, the store) stops it as cleanly as one later: without
    # these handlers yet, Python's default would end the process at once, with no exit line and code -15
    early_stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: early_stop.set())
    try:
        worker = Worker(
            home_folder(home),
            device=device,
            lease_s=lease_s,
            poll_s=poll_s,
            dispatch=dispatch,
            executor=executor,
            address=address,
            concurrency=concurrency,
        )
    except AvalaInferError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stopping.set())
    if early_stop.is_set():
        worker.stopping.set()
    try:
        ran = worker.run(until_idle=until_idle)
    except AvalaInferError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    click.echo(f"worker {worker.id}: ran {ran} job(s)", err=True)


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
