"""``avala-infer keys create|list|revoke``: the managed API keys of ``avala-infer serve``, kept hashed in the store
(``avala_infer/store/api_keys.py``). A key is shown once, when it is made; a revoked key is refused from the
server's next request on, without a restart."""

from __future__ import annotations

import click

from avala_infer.cli.common import echo_json, home_folder, home_option, json_option, map_errors


def _store(home):
    from avala_infer.store import Store

    return Store(home_folder(home))


def _public(row: dict) -> dict:
    """A key's row as shown: no ``id`` (and the store never holds the key)."""
    return {k: v for k, v in row.items() if k != "id"}


@click.group("keys")
def keys_group() -> None:
    """Managed API keys of `avala-infer serve` (one per client; stored hashed, shown once)."""


@keys_group.command("create")
@home_option
@click.option("--name", required=True, help="A name for the key (who or what uses it), unique among active keys.")
@json_option
@map_errors
def create_command(home, name, as_json) -> None:
    """Make a key and print it, this once: stdout has the key alone (or, with --json, {"key", "name", "uid", ...}).

    Clients send it in the X-Avala-Api-Key header, e.g. avala.Client(api_key=KEY, base_url=...). The running
    server accepts it from its next request on.
    """
    with _store(home) as store:
        key, row = store.api_keys.create(name)
    if as_json:
        echo_json({"key": key, **_public(row)})
        return
    click.echo(key)
    click.echo(
        f"made API key {row['uid']} named {row['name']!r}: it is shown only this once; keep it secret "
        f"(avala-infer keys revoke {row['uid']} ends it)",
        err=True,
    )


@keys_group.command("list")
@home_option
@click.option("--all", "include_revoked", is_flag=True, help="Show revoked keys too.")
@json_option
@map_errors
def list_command(home, include_revoked, as_json) -> None:
    """List the keys: uid, name, the key's first characters, created, last used (never the key)."""
    with _store(home) as store:
        rows = [_public(r) for r in store.api_keys.list(include_revoked=include_revoked)]
    if as_json:
        echo_json(rows)
        return
    header = f"{'UID':<22} {'NAME':<20} {'PREFIX':<10} {'CREATED':<30} {'LAST USED':<30}"
    click.echo((header + (" REVOKED" if include_revoked else "")).rstrip())
    for row in rows:
        line = (
            f"{row['uid']:<22} {row['name']:<20} {row['prefix'] + '…':<10} {row['created_at']:<30} "
            f"{row['last_used_at'] or 'never':<30}"
        )
        click.echo((line + (f" {row['revoked_at'] or ''}" if include_revoked else "")).rstrip())
    if not rows:
        click.echo("no managed keys: avala-infer keys create --name NAME", err=True)


@keys_group.command("revoke")
@home_option
@click.argument("name_or_uid")
@json_option
@map_errors
def revoke_command(home, name_or_uid, as_json) -> None:
    """Revoke a key (by uid, or by the name of an active key): the server refuses it from its next request."""
    with _store(home) as store:
        row = _public(store.api_keys.revoke(name_or_uid))
    if as_json:
        echo_json(row)
        return
    click.echo(f"revoked API key {row['uid']} ({row['name']!r})")
