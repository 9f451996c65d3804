"""``avala-infer serve``: the HTTP API (``/api/v1``) for the official Avala SDK, its CLI and avala-agents, over
the store in ``--home``.

Keys: the store's managed keys (``avala-infer keys create``), and besides them one key from ``--api-key-file``,
else ``$AVALA_INFER_API_KEY``, else ``<home>/api-key`` (made, mode 0600, on a start where none of these is given
and the store has no managed key; its path is printed, never the key, and a key is never taken on the command
line). See ``avala_infer/server/auth.py``.

It binds 127.0.0.1 unless ``--host`` says otherwise, and warns on stderr when it listens elsewhere, loudly
without TLS (the official SDK sends its key over plain http to localhost only). ``--ssl-certfile`` and
``--ssl-keyfile`` (uvicorn's) serve https; both are checked (readable, a matching certificate and key) before
the server starts.
"""

from __future__ import annotations

import ipaddress
import ssl
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


def check_tls(certfile: str | None, keyfile: str | None) -> None:
    """Both or neither of the certificate and its key, readable PEM files that belong together; a
    click.UsageError (one without the other) or click.ClickException (a file that cannot be used) naming the
    file and the fix."""
    if certfile is None and keyfile is None:
        return
    if certfile is None or keyfile is None:
        given, missing = ("--ssl-certfile", "--ssl-keyfile") if keyfile is None else ("--ssl-keyfile", "--ssl-certfile")
        raise click.UsageError(f"{given} needs {missing} too: https takes the certificate and its private key")
    for option, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise click.ClickException(f"{option} {path}: cannot read it ({exc.strerror or exc})") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_password)
    except _EncryptedKey:
        raise click.ClickException(
            f"--ssl-keyfile {keyfile} is encrypted with a passphrase; give an unencrypted key (e.g. "
            f"`openssl pkey -in {keyfile} -out key.pem`, kept mode 0600)"
        ) from None
    except ssl.SSLError as exc:
        raise click.ClickException(
            f"--ssl-certfile {certfile} and --ssl-keyfile {keyfile} are not a PEM certificate and its private key "
            f"({exc.reason or exc}); check that both are PEM and that the key is the certificate's"
        ) from None


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    raise _EncryptedKey  # never prompt on the terminal for a passphrase


def bind_warning(host: str, tls: bool) -> str | None:
    """The stderr warning for a server listening on ``host`` (None on loopback)."""
    if is_loopback(host):
        return None
    if tls:
        return (
            f"warning: listening on {host}: other machines can reach this server; every request needs an API key "
            "(avala-infer keys create --name NAME gives each client its own). Bind 127.0.0.1 to keep it local."
        )
    return (
        f"WARNING: serving PLAIN HTTP on {host}: other machines can reach it, and API keys and data cross the "
        "network UNENCRYPTED. The official SDK refuses http:// to any host but localhost: give --ssl-certfile and "
        "--ssl-keyfile to serve https, or bind 127.0.0.1 (the default) and reach it through an SSH tunnel."
    )


@click.command("serve")
@home_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; anything but loopback prints a warning (use https: --ssl-certfile/--ssl-keyfile).",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to bind.")
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding an API key (default: $AVALA_INFER_API_KEY, else <home>/api-key, made on a start when the "
    "store has no managed key). Managed keys (avala-infer keys) are accepted too.",
)
@click.option(
    "--ssl-certfile",
    type=click.Path(dir_okay=False),
    default=None,
    help="Serve https with this PEM certificate (chain); needs --ssl-keyfile.",
)
@click.option(
    "--ssl-keyfile",
    type=click.Path(dir_okay=False),
    default=None,
    help="The certificate's PEM private key (unencrypted, keep it 0600); needs --ssl-certfile.",
)
@click.option(
    "--worker/--no-worker",
    default=True,
    show_default=True,
    help="Run the auto-label jobs (and send the webhooks) from this command; --no-worker when `avala-infer worker` "
    "processes run them.",
)
@click.option(
    "--worker-mode",
    type=click.Choice(["process", "thread"]),
    default="process",
    show_default=True,
    help="process: an `avala-infer worker` child at a lower CPU priority (reads stay fast while a job runs); "
    "thread: a thread of the server's process.",
)
@click.option(
    "--worker-nice",
    default=10,
    show_default=True,
    type=click.IntRange(0, 19),
    help="How far below the server's CPU priority the worker child runs (0-19).",
)
@click.option(
    "-d",
    "--device",
    default="auto",
    show_default=True,
    help="Where the jobs run: auto, cpu, cuda, cuda:N, cuda:0,1 or all.",
)
def serve_command(
    home, host, port, api_key_file, ssl_certfile, ssl_keyfile, worker, worker_mode, worker_nice, device
) -> None:
    """Serve the Avala API at http://HOST:PORT/api/v1 (https with --ssl-certfile/--ssl-keyfile) for the official
    SDK (`avala.Client(api_key=KEY, base_url=...)`, with AVALA_ALLOW_INSECURE_BASE_URL=true for plain http,
    which it allows to localhost only).

    Auto-label jobs (created over HTTP or by the CLI) run on --device in a worker child process started and
    stopped with the server (--worker-mode thread: in this process), unless --no-worker.
    Clients send a key in the X-Avala-Api-Key header: one made with `avala-infer keys create --name NAME`, or
    the server's own key (--api-key-file, $AVALA_INFER_API_KEY or <home>/api-key). Needs the server extra:
    pip install 'avala-infer[server]'.
    """
    check_tls(ssl_certfile, ssl_keyfile)
    try:
        from avala_infer.server.app import create_app, serve
        from avala_infer.server.auth import server_key
    except ImportError as exc:
        click.echo(f"error: the server needs its extra ({exc.name} is missing): pip install 'avala-infer[server]'",
                   err=True)  # fmt: skip
        sys.exit(EXIT_ERROR)
    folder = home_folder(home)
    try:
        key, where = server_key(folder, api_key_file)
        mode = worker_mode if worker else "none"
        app = create_app(folder, [key] if key else [], worker=mode, device=device, worker_nice=worker_nice)
    except AvalaInferError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    click.echo(where, err=True)
    tls = ssl_certfile is not None
    warning = bind_warning(host, tls)
    if warning:
        click.echo(warning, err=True)
    display = f"[{host}]" if ":" in host else host
    scheme = "https" if tls else "http"
    click.echo(f"serving the store in {folder} at {scheme}://{display}:{port}/api/v1", err=True)
    serve(app, host, port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
