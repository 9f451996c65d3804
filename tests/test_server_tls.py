"""Issue 12 item 2 and the bind rule of item 3: ``avala-infer serve --ssl-certfile --ssl-keyfile`` serves https that
the official SDK reads with a CA trusted only through ``SSL_CERT_FILE`` (and no ``AVALA_ALLOW_INSECURE_BASE_URL``);
the SDK refuses plain http to anything but localhost (so a remote client needs https, as the README says); bad
TLS options fail before the server starts with an error naming the file; and a server bound beyond loopback
warns on stderr, loudly when it serves plain http. The certificates are made in the test (``trustme``)."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi", reason="the server extra: pip install -e '.[server]'")
avala = pytest.importorskip("avala", reason="the official SDK is a test extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx")
trustme = pytest.importorskip("trustme", reason="a test extra: pip install -e '.[test]'")

from avala_infer.cli.serve import bind_warning  # noqa: E402
from tests.server_helpers import free_port, start_serve, stop  # noqa: E402

KEY = "tls-test-key-0123456789"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA and a certificate for 127.0.0.1 and localhost it signed, as PEM files: {ca, cert, key}."""
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    leaf.private_key_pem.write_to_path(str(files["key"]))
    with open(files["cert"], "wb") as handle:
        for blob in leaf.cert_chain_pems:
            handle.write(blob.bytes())
    os.chmod(files["key"], 0o600)
    return files


def serve_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AVALA_ALLOW_INSECURE_BASE_URL", "SSL_CERT_FILE")}
    return {**env, "AVALA_INFER_API_KEY": KEY}


def start_https(tmp_path, pki, *args: str):
    """``avala-infer serve`` with the test's certificate on a free port; (process, port, stderr file) once it
    answers over https."""
    port = free_port()
    err = tmp_path / f"serve-{port}.err"
    tls = ["--ssl-certfile", str(pki["cert"]), "--ssl-keyfile", str(pki["key"])]
    command = [sys.executable, "-m", "avala_infer.cli", "serve", "--home", str(tmp_path / "home"), "--port",
               str(port), "--no-worker", *tls, *args]  # fmt: skip
    process = subprocess.Popen(command, env=serve_env(), stdout=subprocess.DEVNULL, stderr=err.open("w"))
    trusted = ssl.create_default_context(cafile=str(pki["ca"]))
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"https://127.0.0.1:{port}/api/v1/users/me/", verify=trusted, timeout=2)
            return process, port, err
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"serve did not start: {err.read_text()}") from None
            time.sleep(0.1)


def test_the_official_sdk_reads_over_https_trusting_the_ca_through_the_environment(tmp_path, pki, monkeypatch):
    monkeypatch.delenv("AVALA_ALLOW_INSECURE_BASE_URL", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    process, port, err = start_https(tmp_path, pki)
    try:
        base_url = f"https://127.0.0.1:{port}/api/v1"
        printed = err.read_text()
        assert f"at {base_url}" in printed and "warning" not in printed.lower()  # loopback: no warning
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        with avala.Client(api_key=KEY, base_url=base_url) as sdk:  # the CA is not trusted: the SDK refuses
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                sdk.projects.list()
        monkeypatch.setenv("SSL_CERT_FILE", str(pki["ca"]))  # read when the SDK builds its httpx client
        with avala.Client(api_key=KEY, base_url=base_url) as sdk:
            assert sdk.projects.list().items == []
            assert sdk.organizations.list().items[0].slug == "local"
        with avala.Client(api_key="wrong", base_url=base_url) as sdk:
            with pytest.raises(avala.errors.AuthenticationError):
                sdk.projects.list()
        with pytest.raises(httpx.RemoteProtocolError):  # plain http to the https port is no way in
            httpx.get(f"http://127.0.0.1:{port}/api/v1/users/me/", headers={"X-Avala-Api-Key": KEY}, timeout=5)
    finally:
        stop(process)


@pytest.mark.parametrize("host", ["192.168.1.5", "10.0.0.7", "example.com", "0.0.0.0"])
def test_the_sdk_refuses_plain_http_to_anything_but_localhost(host, monkeypatch):
    monkeypatch.delenv("AVALA_ALLOW_INSECURE_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="HTTPS"):
        avala.Client(api_key=KEY, base_url=f"http://{host}:8000/api/v1")
    monkeypatch.setenv("AVALA_ALLOW_INSECURE_BASE_URL", "true")  # even when insecure URLs are allowed
    with pytest.raises(ValueError, match="localhost"):
        avala.Client(api_key=KEY, base_url=f"http://{host}:8000/api/v1")
    avala.Client(api_key=KEY, base_url="http://127.0.0.1:8000/api/v1").close()  # loopback, allowed: accepted
    monkeypatch.delenv("AVALA_ALLOW_INSECURE_BASE_URL")
    avala.Client(api_key=KEY, base_url=f"https://{host}:8000/api/v1").close()  # https: accepted (no request)


def serve_fails(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "avala_infer.cli", "serve", "--home", str(tmp_path / "home"), "--port",
         str(free_port()), "--no-worker", *args],
        env=serve_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_tls_options_that_cannot_work_stop_serve_with_an_error_that_names_the_fix(tmp_path, pki):
    only_cert = serve_fails(tmp_path, "--ssl-certfile", str(pki["cert"]))
    assert only_cert.returncode == 2 and "--ssl-certfile needs --ssl-keyfile" in only_cert.stderr
    only_key = serve_fails(tmp_path, "--ssl-keyfile", str(pki["key"]))
    assert only_key.returncode == 2 and "--ssl-keyfile needs --ssl-certfile" in only_key.stderr
    missing = tmp_path / "missing.pem"
    gone = serve_fails(tmp_path, "--ssl-certfile", str(missing), "--ssl-keyfile", str(pki["key"]))
    assert gone.returncode == 1 and f"--ssl-certfile {missing}: cannot read it" in gone.stderr
    unreadable = tmp_path / "unreadable.pem"
    unreadable.write_bytes(pki["key"].read_bytes())
    unreadable.chmod(0)
    if os.geteuid() != 0:  # root reads any file
        locked = serve_fails(tmp_path, "--ssl-certfile", str(pki["cert"]), "--ssl-keyfile", str(unreadable))
        assert locked.returncode == 1 and f"--ssl-keyfile {unreadable}: cannot read it" in locked.stderr
    other_key = tmp_path / "other-key.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other_key))
    mismatch = serve_fails(tmp_path, "--ssl-certfile", str(pki["cert"]), "--ssl-keyfile", str(other_key))
    assert mismatch.returncode == 1 and "the key is the certificate's" in mismatch.stderr
    swapped = serve_fails(tmp_path, "--ssl-certfile", str(pki["key"]), "--ssl-keyfile", str(pki["cert"]))
    assert swapped.returncode == 1 and "are not a PEM certificate and its private key" in swapped.stderr
    encrypted = tmp_path / "encrypted-key.pem"
    write_encrypted_key(pki["key"], encrypted)
    locked_key = serve_fails(tmp_path, "--ssl-certfile", str(pki["cert"]), "--ssl-keyfile", str(encrypted))
    assert locked_key.returncode == 1 and "is encrypted with a passphrase" in locked_key.stderr
    for result in (only_cert, gone, mismatch, swapped, locked_key):
        assert "Traceback" not in result.stderr


def write_encrypted_key(plain, out) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(plain.read_bytes(), password=None)
    out.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )


def test_serve_bound_beyond_loopback_warns_loudly_without_tls_and_plainly_with_it(tmp_path, pki):
    process, port, err = start_serve(tmp_path, "--home", str(tmp_path / "home"), "--host", "0.0.0.0", "--no-worker")
    try:
        printed = err.read_text()
        assert "WARNING: serving PLAIN HTTP on 0.0.0.0" in printed and "UNENCRYPTED" in printed
        assert "--ssl-certfile" in printed and "bind 127.0.0.1" in printed
        assert f"at http://0.0.0.0:{port}/api/v1" in printed
    finally:
        stop(process)
    process, port, err = start_https(tmp_path, pki, "--host", "0.0.0.0")
    try:
        printed = err.read_text()
        assert "warning: listening on 0.0.0.0: other machines can reach this server" in printed
        assert "PLAIN HTTP" not in printed and f"at https://0.0.0.0:{port}/api/v1" in printed
    finally:
        stop(process)


def test_the_bind_warning_is_for_non_loopback_hosts_only():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert bind_warning(host, tls=False) is None and bind_warning(host, tls=True) is None
    for host in ("0.0.0.0", "::", "192.168.1.5"):
        assert "PLAIN HTTP" in bind_warning(host, tls=False)
        assert bind_warning(host, tls=True).startswith("warning: listening on")
