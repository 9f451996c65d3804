"""What the store's repositories share: uids, JSON columns, cursor pages, and the :class:`Repository` base."""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avala_infer.errors import ConfigError, NotFoundError

JSON_COLUMNS = frozenset(
    {"ontology", "type_ontologies", "models", "labels", "label_map", "summary", "label_counts", "annotations"}
)
MAX_PAGE = 1000


def new_uid(prefix: str) -> str:
    """``proj_``, ``ds_``, ``item_``, ``task_``, ``job_``, ``res_`` + 16 hex digits."""
    return f"{prefix}_{secrets.token_hex(8)}"


def row_dict(row: sqlite3.Row | None) -> dict[str, Any] | None:
    """A row as a dict, JSON columns decoded (``id``, the row's position, is kept: pages use it as the cursor)."""
    if row is None:
        return None
    out = dict(zip(row.keys(), row))
    for key in JSON_COLUMNS.intersection(out):
        if isinstance(out[key], str):
            out[key] = json.loads(out[key])
    return out


def page_args(limit: int | None, cursor: str | None) -> tuple[int, int]:
    """(limit, id after which the page starts) from the public arguments; a bad cursor is a ConfigError."""
    try:
        limit = 100 if limit is None else int(limit)
    except (TypeError, ValueError):
        raise ConfigError(f"limit must be a whole number between 1 and {MAX_PAGE}, got {limit!r}") from None
    if not 1 <= limit <= MAX_PAGE:
        raise ConfigError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    if cursor in (None, ""):
        return limit, 0
    try:
        after = int(cursor)
    except (TypeError, ValueError):
        raise ConfigError(f"bad cursor {cursor!r}: pass the next_cursor of the page before") from None
    return limit, after


def page(rows: Sequence[sqlite3.Row], limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """Rows fetched with ``LIMIT limit + 1`` -> (at most ``limit`` dicts, the cursor of the next page or None)."""
    more = len(rows) > limit
    rows = rows[:limit]
    return [row_dict(r) for r in rows], (str(rows[-1]["id"]) if more else None)


class Repository:
    """Queries over one table family, on a connection the caller owns (the :class:`~avala_infer.store.Store`'s,
    or a test's). ``path`` is the database file, named in errors. A repository that needs another's queries gets
    it as a constructor argument; one that writes inside another's transaction documents it."""

    def __init__(self, conn: sqlite3.Connection, path: str | Path) -> None:
        self.conn = conn
        self.path = Path(path)

    def _one(self, table: str, uid: str, what: str, hint: str) -> dict[str, Any]:
        row = self.conn.execute(f"SELECT * FROM {table} WHERE uid = ?", (uid,)).fetchone()  # noqa: S608
        if row is None:
            raise NotFoundError(f"no {what} {uid!r} in the store at {self.path}; {hint}")
        return row_dict(row)
