"""What the CLI modules share: exit codes and NAME=VALUE option parsing."""

from __future__ import annotations

import click

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
