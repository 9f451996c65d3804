"""Inference providers (``store.providers``): a name for a model of ours (``config``: ``model`` and ``model_type``,
checked by the client, which knows models), optionally tied to a project, with the outcome of its last test."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avala_infer.errors import ConfigError
from avala_infer.store.base import Repository, new_uid, page, page_args
from avala_infer.store.db import now_iso, transaction
from avala_infer.store.projects import ProjectRepository

_UNSET: Any = object()
HINT = "`client.inference_providers.list()` shows them"


def _public(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["config"] = json.loads(row["config"]) if isinstance(row["config"], str) else row["config"]
    row["is_active"] = bool(row["is_active"])
    success = row["last_test_success"]
    row["last_test_success"] = None if success is None else bool(success)
    row["project"] = row.pop("project_uid")
    return row


def _check(name: Any = _UNSET, provider_type: Any = _UNSET, config: Any = _UNSET) -> None:
    if name is not _UNSET and not str(name or "").strip():
        raise ConfigError("an inference provider needs a name")
    if provider_type is not _UNSET and not str(provider_type or "").strip():
        raise ConfigError("an inference provider needs a provider_type")
    if config is not _UNSET and not isinstance(config, Mapping):
        raise ConfigError(f"an inference provider's config must be an object, got {type(config).__name__}")


class ProviderRepository(Repository):
    """``store.providers``: create, get, list, update, delete, record_test."""

    def __init__(self, conn: sqlite3.Connection, path: str | Path, *, projects: ProjectRepository) -> None:
        super().__init__(conn, path)
        self.projects = projects

    def create(
        self,
        *,
        name: str,
        provider_type: str,
        config: Mapping[str, Any],
        description: str | None = None,
        is_active: bool = True,
        project: str | None = None,
    ) -> dict[str, Any]:
        _check(name, provider_type, config)
        if project is not None:
            self.projects.get(project)
        uid, now = new_uid("provider"), now_iso()
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO inference_providers (uid, name, description, provider_type, config, is_active, "
                "project_uid, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (uid, str(name).strip(), description, str(provider_type).strip(), json.dumps(dict(config)),
                 int(bool(is_active)), project, now, now),
            )  # fmt: skip
        return self.get(uid)

    def get(self, uid: str) -> dict[str, Any]:
        return _public(self._one("inference_providers", uid, "inference provider", HINT))

    def list(self, *, limit: int | None = None, cursor: str | None = None):
        """A page of providers, oldest first: (rows, next cursor or None)."""
        limit, after = page_args(limit, cursor)
        rows = self.conn.execute(
            "SELECT * FROM inference_providers WHERE id > ? ORDER BY id LIMIT ?", (after, limit + 1)
        ).fetchall()
        rows, next_cursor = page(rows, limit)
        return [_public(r) for r in rows], next_cursor

    def update(
        self,
        uid: str,
        *,
        name: Any = _UNSET,
        description: Any = _UNSET,
        provider_type: Any = _UNSET,
        config: Any = _UNSET,
        is_active: Any = _UNSET,
        project: Any = _UNSET,
    ) -> dict[str, Any]:
        """Change the fields given (``None`` sets ``description`` or ``project`` to null); returns the provider."""
        self.get(uid)
        _check(name, provider_type, config)
        changes: dict[str, Any] = {}
        if name is not _UNSET:
            changes["name"] = str(name).strip()
        if description is not _UNSET:
            changes["description"] = description
        if provider_type is not _UNSET:
            changes["provider_type"] = str(provider_type).strip()
        if config is not _UNSET:
            changes["config"] = json.dumps(dict(config))
        if is_active is not _UNSET:
            changes["is_active"] = int(bool(is_active))
        if project is not _UNSET:
            if project is not None:
                self.projects.get(project)
            changes["project_uid"] = project
        if changes:
            sets = ", ".join(f"{column} = ?" for column in changes)
            with transaction(self.conn):
                self.conn.execute(
                    f"UPDATE inference_providers SET {sets}, updated_at = ? WHERE uid = ?",  # noqa: S608
                    (*changes.values(), now_iso(), uid),
                )
        return self.get(uid)

    def delete(self, uid: str) -> None:
        self.get(uid)
        with transaction(self.conn):
            self.conn.execute("DELETE FROM inference_providers WHERE uid = ?", (uid,))

    def record_test(self, uid: str, success: bool, message: str) -> dict[str, Any]:
        """Store the outcome of a test (now); returns the provider."""
        with transaction(self.conn):
            changed = self.conn.execute(
                "UPDATE inference_providers SET last_test_at = ?, last_test_success = ?, last_test_message = ? "
                "WHERE uid = ?",
                (now_iso(), int(bool(success)), message, uid),
            ).rowcount
        if not changed:
            self.get(uid)  # gone meanwhile: NotFoundError
        return self.get(uid)
