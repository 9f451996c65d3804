"""A real avala-infer server for the server tests: a store with a project of coco128 images imported through the
local client, served by uvicorn on 127.0.0.1 (a free port) in a thread, stopped at the end."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

KEY = "test-key-0123456789"  # not a 40-hex shape: the SDK redacts those from messages


@dataclasses.dataclass
class Served:
    home: Path
    port: int
    project: str
    images: list[Path]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"


class ThreadServer:
    """uvicorn serving ``app`` on an already bound 127.0.0.1 socket, in a daemon thread."""

    def __init__(self, app) -> None:
        import uvicorn

        # proto IPPROTO_TCP: asyncio sets TCP_NODELAY only then (else Nagle adds ~40 ms to each answer)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def start(self, timeout: float = 30.0) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.socket.close()


def make_store(home: Path, images: list[Path]) -> str:
    """A project serving yolo11n with ``images`` imported (a task each); returns its uid."""
    from avala_infer import Avala

    with Avala(home=home, worker=False) as client:
        project = client.projects.create("streets", models={"object_detection": "yolo11n"})
        report = client.projects.import_items(project.uid, [str(p) for p in images])
        assert report.created == len(images), report
    return project.uid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def avala_cli(served, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The official ``avala`` CLI (from ``avala[cli]``) as a subprocess against the server."""
    env = {
        **os.environ,
        "AVALA_API_KEY": KEY,
        "AVALA_BASE_URL": served.base_url,
        "AVALA_ALLOW_INSECURE_BASE_URL": "true",
    }
    script = Path(sys.executable).with_name("avala")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "avala.cli"]
    return subprocess.run(command + list(args), env=env, input=stdin, capture_output=True, text=True, timeout=120)


def start_serve(tmp_path, *args: str, env: dict[str, str] | None = None):
    """``avala-infer serve`` as a process on a free port; returns (process, port, stderr file) once it answers."""
    import httpx

    port = free_port()
    err = tmp_path / f"serve-{port}.err"
    base_env = {k: v for k, v in os.environ.items() if k != "AVALA_INFER_API_KEY"}
    process = subprocess.Popen(
        [sys.executable, "-m", "avala_infer.cli", "serve", "--port", str(port), *args],
        env={**base_env, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=err.open("w"),
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/v1/users/me/", timeout=2)
            return process, port, err
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"serve did not start: {err.read_text()}") from None
            time.sleep(0.1)


def stop(process) -> None:
    """SIGTERM: uvicorn shuts down gracefully, then re-raises the signal (so the exit status says SIGTERM)."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) in (0, -signal.SIGTERM)
