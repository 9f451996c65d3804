"""The API key: the ``X-Avala-Api-Key`` header checked against the server's keys, and where ``avala-infer serve``
finds them.

A request is let in when its key is one of the keys ``create_app`` was given (compared in constant time) or an
active managed key of the store (``avala-infer keys create``; found by its SHA-256, one indexed lookup per
request, so a revoked key is refused from the next request on, without a restart). ``serve`` gives the app at
most one key of its own: from ``--api-key-file``, else ``$AVALA_INFER_API_KEY``, else ``<home>/api-key`` when
that file exists; the file is made (0600) only when none of these is given and the store has no active managed
key, so a fresh home still starts with a key. Managed keys work alongside any of them.
"""

from __future__ import annotations

import hmac
import os
import secrets
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from fastapi import Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader

from avala_infer.errors import ConfigError, StoreError
from avala_infer.store.api_keys import ApiKeyRepository
from avala_infer.store.db import DB_NAME, connect

KEY_HEADER = "X-Avala-Api-Key"
KEY_ENV = "AVALA_INFER_API_KEY"
KEY_FILE_NAME = "api-key"
LOOKUP_BUSY_MS = 100  # a key lookup never waits longer than this for a job's write (last_used_at is skipped)

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


class ManagedKeys:
    """The store's managed keys as the server checks them: a connection of its own to ``<home>/avala-infer.db``
    (opened on the first check; lookups one at a time under a lock, never behind the routes' client lock), with
    a short busy timeout so that a job's write cannot hold a request up."""

    def __init__(self, home: str | os.PathLike) -> None:
        self.home = Path(home).expanduser()
        self._lock = threading.Lock()
        self._repo = None

    def verify(self, key: str) -> bool:
        """Whether ``key`` is an active managed key (its ``last_used_at`` recorded, at most once a minute)."""
        with self._lock:
            if self._repo is None:
                conn = connect(self.home / DB_NAME)
                conn.execute(f"PRAGMA busy_timeout={LOOKUP_BUSY_MS}")
                self._repo = ApiKeyRepository(conn, self.home / DB_NAME)
            try:
                return self._repo.verify(key) is not None
            except sqlite3.Error as exc:
                raise StoreError(f"cannot check the API key in the store at {self._repo.path}: {exc}") from exc

    def close(self) -> None:
        """Close the connection (a later check opens it again)."""
        with self._lock:
            if self._repo is not None:
                self._repo.conn.close()
                self._repo = None


async def require_key(request: Request, key: str | None = Security(_key_header)) -> None:
    """The dependency every ``/api/v1`` route has: a missing or wrong key is a 401.

    Async, so the server's own key is checked on the event loop (a sync dependency costs every request a hop
    to the thread pool and back); only a managed key's store lookup goes to a thread."""
    if not key:
        raise Unauthorized(f"missing API key: send it in the {KEY_HEADER} header")
    state = request.app.state
    if key_matches(key, state.api_keys):
        return
    managed = getattr(state, "managed_keys", None)
    if managed is not None and await run_in_threadpool(managed.verify, key):
        return
    raise Unauthorized(f"invalid API key: send a key of this server in the {KEY_HEADER} header (avala-infer keys)")


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


def has_managed_keys(home: Path) -> bool:
    """Whether the store in ``home`` has an active managed key (False when there is no store yet)."""
    from avala_infer.store import Store

    if not (home / DB_NAME).exists():
        return False
    with Store(home) as store:
        return store.api_keys.has_active()


def server_key(home: Path, key_file: str | os.PathLike | None = None) -> tuple[str | None, str]:
    """The key ``serve`` gives the app besides the managed keys, and a line that says where it came from (never
    the key): ``key_file``, else ``$AVALA_INFER_API_KEY``, else ``<home>/api-key`` when it exists or when the
    store has no active managed key (then it is made); else None (the managed keys only)."""
    if key_file is None and not os.environ.get(KEY_ENV, "").strip():
        if not (home / KEY_FILE_NAME).exists() and has_managed_keys(home):
            return None, "API keys: the store's managed keys only (avala-infer keys list)"
    key, path, made = resolve_api_key(home, key_file)
    if made:
        where = f"made an API key in {path} (mode 0600): clients send it in the {KEY_HEADER} header"
    elif path is not None:
        where = f"API key: from {path}"
    else:
        where = f"API key: from ${KEY_ENV}"
    return key, where + "; the store's managed keys (avala-infer keys) are accepted too"
