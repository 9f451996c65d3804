"""``avala-infer serve``: the key (``--api-key-file``, ``$AVALA_INFER_API_KEY``, or ``<home>/api-key`` made 0600
on the first start and reused, its path printed and never the key), and a real server process that the official
SDK reads from and SIGTERM stops."""

from __future__ import annotations

import stat

import pytest

pytest.importorskip("fastapi", reason="the server extra: pip install -e '.[server]'")
avala = pytest.importorskip("avala", reason="the official SDK is a test extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx")

from avala_infer.cli.serve import is_loopback  # noqa: E402
from avala_infer.errors import ConfigError  # noqa: E402
from avala_infer.server.auth import key_matches, resolve_api_key  # noqa: E402
from tests.server_helpers import start_serve, stop  # noqa: E402


def test_serve_makes_a_private_key_file_once_and_prints_its_path_only(tmp_path, monkeypatch):
    home = tmp_path / "home"
    process, port, err = start_serve(tmp_path, "--home", str(home))
    try:
        key_file = home / "api-key"
        key = key_file.read_text().strip()
        assert len(key) >= 40
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(home.stat().st_mode) & 0o077 == 0
        printed = err.read_text()
        assert str(key_file) in printed and key not in printed
        assert "warning" not in printed
        monkeypatch.setenv("AVALA_ALLOW_INSECURE_BASE_URL", "true")
        with avala.Client(api_key=key, base_url=f"http://127.0.0.1:{port}/api/v1") as client:
            assert client.projects.list().items == []
            assert client.organizations.list().items[0].slug == "local"
        with avala.Client(api_key="not-the-key", base_url=f"http://127.0.0.1:{port}/api/v1") as client:
            with pytest.raises(avala.errors.AuthenticationError):
                client.projects.list()
    finally:
        stop(process)
    process, port, err = start_serve(tmp_path, "--home", str(home))  # the second start reuses the file
    try:
        assert key_file.read_text().strip() == key
        answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/users/me/", headers={"X-Avala-Api-Key": key})
        assert answer.status_code == 200
        assert key not in err.read_text()
    finally:
        stop(process)


def test_serve_takes_the_key_from_a_file_or_the_environment(tmp_path):
    home = tmp_path / "home"
    key_file = tmp_path / "key.txt"
    key_file.write_text("from-the-file\n")
    process, port, _ = start_serve(tmp_path, "--home", str(home), "--api-key-file", str(key_file))
    try:
        url = f"http://127.0.0.1:{port}/api/v1/users/me/"
        assert httpx.get(url, headers={"X-Avala-Api-Key": "from-the-file"}).status_code == 200
    finally:
        stop(process)
    process, port, _ = start_serve(tmp_path, "--home", str(home), env={"AVALA_INFER_API_KEY": "from-the-env"})
    try:
        url = f"http://127.0.0.1:{port}/api/v1/users/me/"
        assert httpx.get(url, headers={"X-Avala-Api-Key": "from-the-env"}).status_code == 200
        assert httpx.get(url, headers={"X-Avala-Api-Key": "from-the-file"}).status_code == 401
    finally:
        stop(process)
    assert not (home / "api-key").exists()


def test_resolve_api_key_refuses_an_empty_file(tmp_path, monkeypatch):
    monkeypatch.delenv("AVALA_INFER_API_KEY", raising=False)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve_api_key(tmp_path, empty)
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_api_key(tmp_path, tmp_path / "missing")
    key, path, made = resolve_api_key(tmp_path / "h")
    assert made and path == tmp_path / "h" / "api-key"
    assert resolve_api_key(tmp_path / "h") == (key, path, False)


def test_key_matches_only_a_whole_key():
    assert key_matches("abc", ["x", "abc"])
    assert not key_matches("ab", ["abc"])
    assert not key_matches("", ["abc"])
    assert not key_matches(None, ["abc"])


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True), ("0.0.0.0", False),
     ("192.168.1.5", False), ("example.com", False)],
)  # fmt: skip
def test_a_non_loopback_host_is_told_apart(host, loopback):
    assert is_loopback(host) is loopback
