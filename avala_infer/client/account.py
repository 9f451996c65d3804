"""The one local user and organization, as the cloud SDK's ``organizations`` resource and ``GET /users/me/`` show
them: a local store has no accounts, so these are fixed, and every dataset's owner is their ``local`` slug."""

from __future__ import annotations

import dataclasses

from avala_infer.client.resources import _Resource
from avala_infer.client.types import LOCAL_OWNER, CursorPage
from avala_infer.errors import NotFoundError


@dataclasses.dataclass
class Organization:
    """The SDK's ``Organization`` (its required fields and flags)."""

    uid: str
    name: str
    slug: str
    is_verified: bool = False
    is_active: bool = True


@dataclasses.dataclass
class User:
    """Who ``GET /users/me/`` says the caller is: the local user."""

    uid: str
    username: str
    email: str | None = None


LOCAL_ORGANIZATION = Organization(uid="org_local", name="Local", slug=LOCAL_OWNER)
LOCAL_USER = User(uid="user_local", username=LOCAL_OWNER)


class Organizations(_Resource):
    """``client.organizations``: the one local organization."""

    def list(self, *, limit: int | None = None, cursor: str | None = None) -> CursorPage[Organization]:
        return CursorPage([dataclasses.replace(LOCAL_ORGANIZATION)], None, cursor)

    def get(self, slug: str) -> Organization:
        if slug != LOCAL_ORGANIZATION.slug:
            raise NotFoundError(f"no organization {slug!r}: the local store has one, {LOCAL_ORGANIZATION.slug!r}")
        return dataclasses.replace(LOCAL_ORGANIZATION)


class Users(_Resource):
    """``client.users``: ``me()`` is the local user."""

    def me(self) -> User:
        return dataclasses.replace(LOCAL_USER)
