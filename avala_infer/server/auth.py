"""The API key: the ``X-Avala-Api-Key`` header checked against the server's keys (constant-time), and where
``avala-infer serve`` finds its key (a file, the environment, or ``<home>/api-key`` made on first start)."""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from avala_infer.errors import ConfigError

KEY_HEADER = "X-Avala-Api-Key"
KEY_ENV = "AVALA_INFER_API_KEY"
KEY_FILE_NAME = "api-key"

_key_header = APIKeyHeader(name=KEY_HEADER, auto_error=False, description="The server's API key")


class Unauthorized(Exception):
    """A request without the API key, or with a wrong one (answered 401)."""


def key_matches(given: str | None, keys: Sequence[str]) -> bool:
    """Whether ``given`` is one of ``keys``, compared in constant time (every key is compared)."""
    if not given:
        return False
    given_bytes = given.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given_bytes, key.encode())
    return matched


def require_key(request: Request, key: str | None = Security(_key_header)) -> None:
    """The dependency every ``/api/v1`` route has: a missing or wrong key is a 401."""
    if key is None:
        raise Unauthorized(f"missing API key: send it in the {KEY_HEADER} header")
    if not key_matches(key, request.app.state.api_keys):
        raise Unauthorized("invalid API key")


def read_key_file(path: str | os.PathLike) -> str:
    """The key in ``path`` (its first line, stripped); an empty or unreadable file is a ConfigError."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the API key file {path}: {exc.strerror or exc}") from None
    if not key:
        raise ConfigError(f"the API key file {path} is empty: put the key in it, or remove it to have one made")
    return key


def resolve_api_key(home: Path, key_file: str | os.PathLike | None = None) -> tuple[str, Path | None, bool]:
    """The key the server accepts: from ``key_file``, else ``$AVALA_INFER_API_KEY``, else ``<home>/api-key``,
    made (mode 0600, ``secrets.token_urlsafe(32)``) when missing. Returns (key, the file it came from or None
    for the environment, whether that file was just made)."""
    if key_file is not None:
        return read_key_file(key_file), Path(key_file), False
    if os.environ.get(KEY_ENV, "").strip():
        return os.environ[KEY_ENV].strip(), None, False
    path = home / KEY_FILE_NAME
    home.mkdir(parents=True, exist_ok=True, mode=0o700)  # as the store makes its home
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_key_file(path), path, False
    key = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    return key, path, True
