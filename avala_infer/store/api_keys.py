"""Managed API keys (``store.api_keys``): the keys ``avala-infer keys create`` makes for the server, stored as the
SHA-256 of the key, never the key itself.

A key is ``avk_`` + ``secrets.token_urlsafe(32)``: 256 random bits. A slow password hash (bcrypt, scrypt,
argon2) exists to make guessing a low-entropy secret costly; guessing one of 2**256 keys is out of reach at any
hash speed, so one SHA-256 is as safe here, and it lets the server find a key with one indexed lookup on every
request. Whoever reads the database learns no key from it.

A revoked key keeps its row (``revoked_at`` set: ``keys list --all`` shows it) and stops working at once: every
request looks its key up again. A name belongs to one active key at a time.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
import sqlite3
from typing import Any

from avala_infer.errors import ConfigError, NotFoundError
from avala_infer.store.base import Repository, new_uid, row_dict
from avala_infer.store.db import now_iso, transaction

KEY_PREFIX = "avk_"
TOUCH_EVERY_S = 60.0  # last_used_at is written at most this often per key: reads stay reads
PUBLIC_COLUMNS = "id, uid, name, prefix, created_at, last_used_at, revoked_at"


def hash_key(key: str) -> str:
    """The stored form of ``key``: its SHA-256, hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeyRepository(Repository):
    """Create, list, revoke and check managed API keys. Rows never carry the key: ``uid``, ``name``, ``prefix``
    (the key's first characters, to recognise it), ``created_at``, ``last_used_at``, ``revoked_at``."""

    def create(self, name: str) -> tuple[str, dict[str, Any]]:
        """A new key named ``name`` -> (the key, shown this once; its row). A name in use by an active key is a
        ConfigError."""
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"an API key needs a name (a non-empty string), got {name!r}")
        name = name.strip()
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        uid = new_uid("key")
        try:
            with transaction(self.conn):
                self.conn.execute(
                    "INSERT INTO api_keys (uid, name, key_hash, prefix, created_at) VALUES (?, ?, ?, ?, ?)",
                    (uid, name, hash_key(key), key[: len(KEY_PREFIX) + 4], now_iso()),
                )
        except sqlite3.IntegrityError:
            raise ConfigError(
                f"an active API key is already named {name!r} in the store at {self.path}; pick another name, or "
                f"revoke it first (avala-infer keys revoke {name})"
            ) from None
        return key, self.get(uid)

    def list(self, *, include_revoked: bool = False) -> list[dict[str, Any]]:
        """The keys' rows (no key, no hash), oldest first; revoked ones only with ``include_revoked``."""
        where = "" if include_revoked else "WHERE revoked_at IS NULL"
        rows = self.conn.execute(f"SELECT {PUBLIC_COLUMNS} FROM api_keys {where} ORDER BY id").fetchall()  # noqa: S608
        return [row_dict(r) for r in rows]

    def get(self, name_or_uid: str) -> dict[str, Any]:
        """The key with this uid, else the active key with this name; NotFoundError naming both."""
        row = self.conn.execute(f"SELECT {PUBLIC_COLUMNS} FROM api_keys WHERE uid = ?", (name_or_uid,)).fetchone()
        if row is None:
            row = self.conn.execute(
                f"SELECT {PUBLIC_COLUMNS} FROM api_keys WHERE name = ? AND revoked_at IS NULL", (name_or_uid,)
            ).fetchone()
        if row is None:
            raise NotFoundError(
                f"no API key with the uid or active name {name_or_uid!r} in the store at {self.path}; "
                "see avala-infer keys list"
            )
        return row_dict(row)

    def revoke(self, name_or_uid: str) -> dict[str, Any]:
        """Revoke the key (by uid or active name): the next request with it is refused. Revoking a revoked key
        is a ConfigError."""
        key = self.get(name_or_uid)
        if key["revoked_at"] is not None:
            raise ConfigError(f"the API key {key['uid']} ({key['name']!r}) was already revoked at {key['revoked_at']}")
        with transaction(self.conn):
            self.conn.execute("UPDATE api_keys SET revoked_at = ? WHERE uid = ?", (now_iso(), key["uid"]))
        return self.get(key["uid"])

    def has_active(self) -> bool:
        """Whether any key is active (not revoked)."""
        return self.conn.execute("SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1").fetchone() is not None

    def verify(self, key: str) -> dict[str, Any] | None:
        """The active key's row when ``key`` is one (found by its hash, an indexed lookup), else None. Records
        ``last_used_at`` when the last record is older than ``TOUCH_EVERY_S``; that record is best-effort: when
        another writer holds the database it is skipped (the caller may set a short busy timeout), never an
        error."""
        if not key:
            return None
        row = self.conn.execute(
            f"SELECT {PUBLIC_COLUMNS} FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",  # noqa: S608
            (hash_key(key),),
        ).fetchone()
        if row is None:
            return None
        found = row_dict(row)
        now = datetime.datetime.now(datetime.timezone.utc)
        last = found["last_used_at"]
        if last is None or (now - datetime.datetime.fromisoformat(last)).total_seconds() >= TOUCH_EVERY_S:
            try:
                self.conn.execute(
                    "UPDATE api_keys SET last_used_at = ? WHERE id = ? AND revoked_at IS NULL", (now_iso(), found["id"])
                )
            except sqlite3.OperationalError:  # locked by a job's batch: next time
                pass
        return found
