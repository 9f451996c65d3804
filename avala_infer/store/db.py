"""The SQLite connection: WAL mode, foreign keys, a busy timeout, migrations applied on open, and short
transactions (``BEGIN IMMEDIATE`` for writes, so two writers queue instead of failing half-way).

Readers never wait for the writer in WAL mode; a writer waits up to ``busy_timeout`` for another writer's
transaction, and ours are one batch of results long.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from avala_infer.errors import StoreError
from avala_infer.store.migrations import MIGRATIONS

DB_NAME = "avala-infer.db"
BUSY_TIMEOUT_MS = 30_000


def default_home() -> Path:
    """``$AVALA_INFER_HOME``, else ``$XDG_DATA_HOME/avala-infer``, else ``~/.local/share/avala-infer``."""
    if os.environ.get("AVALA_INFER_HOME"):
        return Path(os.environ["AVALA_INFER_HOME"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "avala-infer"


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the store at ``path`` and bring its schema up to date."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; a crash loses no committed batch
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        migrate(conn)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(
            f"cannot open the store at {path}: {exc}; check the folder (--home / AVALA_INFER_HOME)"
        ) from exc
    return conn


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply the migrations not yet recorded, in order, each in its own transaction; returns their names."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    recorded = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
    if all(name in recorded for name, _ in MIGRATIONS):
        return []  # up to date: no write lock taken (every CLI call opens the store)
    applied = []
    for name, sql in MIGRATIONS:
        with transaction(conn):
            if conn.execute("SELECT 1 FROM schema_migrations WHERE name = ?", (name,)).fetchone():
                continue
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)", (name, now_iso()))
            applied.append(name)
    return applied


def _statements(sql: str) -> list[str]:
    """Split a migration into statements (no semicolons inside strings in our migrations)."""
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any error)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
