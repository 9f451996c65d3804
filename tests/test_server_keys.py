"""Issue 12 item 3, keys: ``avala-infer keys create|list|revoke`` (real CLI subprocesses) over a store that keeps
only each key's SHA-256; a running ``avala-infer serve`` accepts a managed key through the official SDK from the
next request on and refuses a revoked one (the SDK's ``AuthenticationError``) without a restart; the database and
its WAL never hold a key. A missing or wrong key is a 401 with a string ``detail`` on every ``/api/v1`` route of
the app (the list read from the app, so routes added later are covered), whatever the method."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("fastapi", reason="the server extra: pip install -e '.[server]'")
avala = pytest.importorskip("avala", reason="the official SDK is a test extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx")

from avala_infer.server.app import create_app  # noqa: E402
from avala_infer.store import Store  # noqa: E402
from avala_infer.store.api_keys import hash_key  # noqa: E402
from tests.server_helpers import KEY, ThreadServer, start_serve, stop  # noqa: E402
from tests.test_server_security import api_routes, fill  # noqa: E402


def keys_cli(home, *args: str) -> subprocess.CompletedProcess:
    """``avala-infer keys ...`` as a subprocess over ``home``."""
    return subprocess.run(
        [sys.executable, "-m", "avala_infer.cli", "keys", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def db_bytes(home) -> bytes:
    """The database file and its -wal side file, as bytes."""
    out = b""
    for name in ("avala-infer.db", "avala-infer.db-wal"):
        path = home / name
        if path.exists():
            out += path.read_bytes()
    return out


def test_keys_cli_makes_lists_and_revokes_keys_that_a_running_server_honours_at_once(tmp_path, monkeypatch):
    home = tmp_path / "home"
    made = keys_cli(home, "create", "--name", "ci", "--json")
    assert made.returncode == 0, made.stderr
    ci = json.loads(made.stdout)
    assert ci["name"] == "ci" and ci["uid"].startswith("key_") and ci["key"].startswith("avk_")
    assert len(ci["key"]) >= 40 and ci["revoked_at"] is None
    plain = keys_cli(home, "create", "--name", "laptop")
    assert plain.returncode == 0, plain.stderr
    laptop_key = plain.stdout.strip()  # stdout is the key alone: KEY=$(avala-infer keys create --name N)
    assert laptop_key.startswith("avk_") and "\n" not in laptop_key and "shown only this once" in plain.stderr
    again = keys_cli(home, "create", "--name", "ci")
    assert again.returncode == 1 and "already named 'ci'" in again.stderr

    # the store keeps hashes only: neither key is in the database or its WAL, their hashes are
    stored = db_bytes(home)
    for key in (ci["key"], laptop_key):
        assert key.encode() not in stored and key[4:].encode() not in stored
        assert hash_key(key).encode() in stored
    assert hash_key(ci["key"]) == hashlib.sha256(ci["key"].encode()).hexdigest()

    process, port, err = start_serve(tmp_path, "--home", str(home))
    try:
        assert not (home / "api-key").exists()  # managed keys exist: no key file is made
        assert "managed keys only" in err.read_text()
        base_url = f"http://127.0.0.1:{port}/api/v1"
        monkeypatch.setenv("AVALA_ALLOW_INSECURE_BASE_URL", "true")
        with avala.Client(api_key=ci["key"], base_url=base_url) as sdk:
            assert sdk.projects.list().items == []
            assert sdk.organizations.list().items[0].slug == "local"
            listed = keys_cli(home, "list")
            assert listed.returncode == 0, listed.stderr
            assert ci["uid"] in listed.stdout and "laptop" in listed.stdout
            assert ci["key"] not in listed.stdout + listed.stderr and laptop_key not in listed.stdout
            rows = {r["name"]: r for r in json.loads(keys_cli(home, "list", "--json").stdout)}
            assert rows["ci"]["last_used_at"] is not None and rows["laptop"]["last_used_at"] is None
            assert "key" not in rows["ci"] and "key_hash" not in rows["ci"]

            revoked = keys_cli(home, "revoke", "ci")
            assert revoked.returncode == 0 and ci["uid"] in revoked.stdout
            with pytest.raises(avala.errors.AuthenticationError):  # the next request, same server
                sdk.projects.list()
        with avala.Client(api_key=laptop_key, base_url=base_url) as sdk:
            assert sdk.projects.list().items == []  # the other key still works
        assert keys_cli(home, "revoke", ci["uid"]).returncode == 1  # already revoked: said so
        assert keys_cli(home, "revoke", "nobody").returncode == 1
        assert [r["name"] for r in json.loads(keys_cli(home, "list", "--json").stdout)] == ["laptop"]
        everything = json.loads(keys_cli(home, "list", "--all", "--json").stdout)
        assert [(r["name"], r["revoked_at"] is not None) for r in everything] == [("ci", True), ("laptop", False)]
        assert keys_cli(home, "create", "--name", "ci").returncode == 0  # a revoked key's name is free again
    finally:
        stop(process)
    assert ci["key"].encode() not in db_bytes(home) and laptop_key.encode() not in db_bytes(home)


def test_the_key_lookup_is_one_indexed_query_and_last_used_is_written_at_most_once_a_minute(tmp_path):
    with Store(tmp_path / "home") as store:
        key, row = store.api_keys.create("bot")
        plan = " ".join(
            r[-1]
            for r in store.conn.execute(
                "EXPLAIN QUERY PLAN SELECT * FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", ("x",)
            )
        )
        assert "USING INDEX" in plan, plan
        assert store.api_keys.verify(key)["uid"] == row["uid"]
        first = store.api_keys.get("bot")["last_used_at"]
        assert first is not None
        changes = store.conn.total_changes
        assert store.api_keys.verify(key) is not None
        assert store.conn.total_changes == changes  # a read again within the minute
        assert store.api_keys.verify(key + "x") is None and store.api_keys.verify("") is None
        store.api_keys.revoke(row["uid"])
        assert store.api_keys.verify(key) is None
        assert not store.api_keys.has_active()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A server given ``KEY`` (as the tests give it) over a store with one active and one revoked managed key."""
    home = tmp_path_factory.mktemp("keys") / "home"
    with Store(home) as store:
        managed, _ = store.api_keys.create("active")
        revoked, _ = store.api_keys.create("gone")
        store.api_keys.revoke("gone")
    app = create_app(home, [KEY], worker=False)
    server = ThreadServer(app).start()
    try:
        yield app, f"http://127.0.0.1:{server.port}", managed, revoked
    finally:
        server.stop()


def test_every_api_route_answers_401_with_a_string_detail_without_a_good_key(keyed):
    app, origin, managed, revoked = keyed
    routes = api_routes(app)
    methods = {m for m, _ in routes}
    assert len(routes) >= 15 and {"GET", "POST", "DELETE"} <= methods, routes
    wrong = {
        "no key": {},
        "empty key": {"X-Avala-Api-Key": ""},
        "wrong key": {"X-Avala-Api-Key": "wrong-key"},
        "a prefix of the key": {"X-Avala-Api-Key": KEY[:-1]},
        "revoked managed key": {"X-Avala-Api-Key": revoked},
        "key in another header": {"Authorization": f"Bearer {KEY}"},
    }
    with httpx.Client(base_url=origin, timeout=30, follow_redirects=False) as http:
        for method, path in routes:
            url = fill(path, "nope")
            for why, headers in wrong.items():
                body = {"json": {}} if method in ("POST", "PATCH", "PUT") else {}
                answer = http.request(method, url, headers=headers, **body)
                assert answer.status_code == 401, (method, path, why, answer.status_code, answer.text)
                detail = answer.json()["detail"]
                assert isinstance(detail, str) and "API key" in detail, (method, path, why, detail)
            for key in (KEY, managed):  # the good keys get past the check (whatever the route answers next)
                answer = http.request(method, url, headers={"X-Avala-Api-Key": key})
                assert answer.status_code != 401, (method, path, answer.text)


def test_the_sdk_sees_a_wrong_or_revoked_key_as_an_authentication_error(keyed, monkeypatch):
    _, origin, managed, revoked = keyed
    monkeypatch.setenv("AVALA_ALLOW_INSECURE_BASE_URL", "true")
    with avala.Client(api_key=managed, base_url=origin + "/api/v1") as sdk:
        assert sdk.projects.list().items == []
    for key in (revoked, "wrong-key"):
        with avala.Client(api_key=key, base_url=origin + "/api/v1") as sdk:
            with pytest.raises(avala.errors.AuthenticationError) as caught:
                sdk.projects.list()
            assert caught.value.status_code == 401 and "invalid API key" in str(caught.value)


def test_a_home_with_a_key_file_keeps_it_beside_the_managed_keys(tmp_path):
    home = tmp_path / "home"
    process, port, _ = start_serve(tmp_path, "--home", str(home))  # a fresh home: the key file is made
    stop(process)
    file_key = (home / "api-key").read_text().strip()
    managed = json.loads(keys_cli(home, "create", "--name", "ci", "--json").stdout)["key"]
    process, port, err = start_serve(tmp_path, "--home", str(home))
    try:
        assert str(home / "api-key") in err.read_text() and "managed keys" in err.read_text()
        for key in (file_key, managed):
            answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/users/me/", headers={"X-Avala-Api-Key": key})
            assert answer.status_code == 200
    finally:
        stop(process)
    assert os.stat(home / "api-key").st_mode & 0o077 == 0
