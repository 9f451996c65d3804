"""``avala-infer serve``: the HTTP API (``/api/v1``) for the official Avala SDK, its CLI and avala-agents, over
the store in ``--home``. The API key comes from ``--api-key-file``, else ``$AVALA_INFER_API_KEY``, else
``<home>/api-key`` (made, mode 0600, on the first start; its path is printed, never the key, and a key is never
taken on the command line)."""

from __future__ import annotations

import ipaddress
import sys

import click

from avala_infer.cli.common import EXIT_ERROR, home_folder, home_option
from avala_infer.errors import AvalaInferError


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command("serve")
@home_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (plain http: keep it local).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to bind.")
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding the API key (default: $AVALA_INFER_API_KEY, else <home>/api-key, made on first start).",
)
@click.option(
    "--worker/--no-worker",
    default=True,
    show_default=True,
    help="Run the auto-label jobs (and send the webhooks) in this process; --no-worker when `avala-infer worker` "
    "processes run them.",
)
@click.option(
    "-d", "--device", default="auto", show_default=True, help="Where the jobs run: auto, cpu, cuda or cuda:N."
)
def serve_command(home, host, port, api_key_file, worker, device) -> None:
    """Serve the Avala API at http://HOST:PORT/api/v1 for the official SDK (`avala.Client(api_key=KEY,
    base_url=...)`, with AVALA_ALLOW_INSECURE_BASE_URL=true for plain http on 127.0.0.1).

    Auto-label jobs (created over HTTP or by the CLI) run in this process on --device unless --no-worker.
    Clients send the key in the X-Avala-Api-Key header. Needs the server extra: pip install 'avala-infer[server]'.
    """
    try:
        from avala_infer.server.app import create_app, serve
        from avala_infer.server.auth import resolve_api_key
    except ImportError as exc:
        click.echo(f"error: the server needs its extra ({exc.name} is missing): pip install 'avala-infer[server]'",
                   err=True)  # fmt: skip
        sys.exit(EXIT_ERROR)
    folder = home_folder(home)
    try:
        key, key_path, made = resolve_api_key(folder, api_key_file)
        app = create_app(folder, [key], worker=worker, device=device)
    except AvalaInferError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    if made:
        click.echo(
            f"made an API key in {key_path} (mode 0600): clients send it in the X-Avala-Api-Key header", err=True
        )
    elif key_path is not None:
        click.echo(f"API key: from {key_path}", err=True)
    else:
        click.echo("API key: from $AVALA_INFER_API_KEY", err=True)
    if not is_loopback(host):
        click.echo(
            f"warning: serving plain http on {host}: the key and the data cross the network unencrypted; bind "
            "127.0.0.1 unless the network is trusted",
            err=True,
        )
    display = f"[{host}]" if ":" in host else host
    click.echo(f"serving the store in {folder} at http://{display}:{port}/api/v1", err=True)
    serve(app, host, port)
