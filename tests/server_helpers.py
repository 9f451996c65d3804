"""A real avala-infer server for the server tests: a store with a project of coco128 images imported through the
local client, served by uvicorn on 127.0.0.1 (a free port) in a thread, stopped at the end."""

from __future__ import annotations

import dataclasses
import socket
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

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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
