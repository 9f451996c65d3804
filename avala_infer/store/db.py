"""The SQLite connection: WAL mode, foreign keys, a busy timeout, migrations applied on open, and short
transactions (``BEGIN IMMEDIATE`` for writes, so two writers queue instead of failing half-way).

Readers never wait for the writer in WAL mode; a writer waits up to ``busy_timeout`` for another writer's
transaction, and ours are one batch of results long.

The store holds agents' signing secrets, so it is private to its owner: the database file and its ``-wal`` and
``-shm`` side files are created 0600, and at every open any of them that the group or others may use is logged
(a warning) and set back to 0600. The home folder is created 0700 when the store creates it; a folder that
already exists is the user's own choice and keeps its mode, with a warning when the group or others may write
to it (they could replace the database).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

from avala_infer.errors import StoreError
from avala_infer.store.migrations import MIGRATIONS

DB_NAME = "avala-infer.db"
BUSY_TIMEOUT_MS = 30_000
SIDE_FILES = ("-wal", "-shm")
FILE_MODE = 0o600  # the database and its side files
HOME_MODE = 0o700  # the home folder, when the store creates it

log = logging.getLogger(__name__)


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
        _make_home(path.parent)
        _make_private(path)
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; a crash loses no committed batch
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        migrate(conn)
        check_permissions(path)  # the -wal and -shm files exist from here on
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(
            f"cannot open the store at {path}: {exc}; check the folder (--home / AVALA_INFER_HOME)"
        ) from exc
    return conn


def _make_home(home: Path) -> None:
    """Create the home folder 0700 (its missing parents as mkdir makes them); warn about an existing one that the
    group or others may write to, and leave it as its owner made it."""
    if home.is_dir():
        mode = home.stat().st_mode
        if os.name == "posix" and mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
            log.warning(
                "the store's folder %s is writable by its group or others (mode %o): they could replace the "
                "database, which holds agents' secrets; run `chmod 700 %s` unless you share it on purpose",
                home, stat.S_IMODE(mode), home,
            )  # fmt: skip
        return
    home.parent.mkdir(parents=True, exist_ok=True)
    try:
        home.mkdir(mode=HOME_MODE)
    except FileExistsError:  # another process made it just now
        return
    if os.name == "posix":
        os.chmod(home, HOME_MODE)  # whatever the umask


def _make_private(path: Path) -> None:
    """Create the database file 0600 before SQLite does (SQLite makes it 0644 less the umask, and gives the
    -wal and -shm files the database's mode)."""
    if os.name == "posix" and not path.exists():
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))


def check_permissions(path: Path) -> list[Path]:
    """Set the database and its side files that the group or others may read or write back to 0600, with a
    warning each; returns the files changed. A file that cannot be changed (someone else's) is only logged."""
    if os.name != "posix":
        return []
    fixed = []
    for file in (path, *(path.with_name(path.name + side) for side in SIDE_FILES)):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        if not mode & 0o077:
            continue
        try:
            os.chmod(file, FILE_MODE)
        except OSError as exc:
            log.warning("%s is open to its group or others (mode %o) and cannot be made private: %s; it holds "
                        "agents' secrets: run `chmod 600 %s`", file, mode, exc, file)  # fmt: skip
            continue
        log.warning("%s was open to its group or others (mode %o); it holds agents' secrets: set to 600",
                    file, mode)  # fmt: skip
        fixed.append(file)
    return fixed


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
