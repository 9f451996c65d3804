"""Issue 9, item 6: ``Avala()`` starts nothing until it needs to.

A client that only reads, in a home whose agent has deliveries pending for a real receiver on 127.0.0.1, starts
no thread and posts nothing; its first write starts the webhook dispatcher (which then sends them); its first job
created, or waited on, starts the job worker, which runs the job (a real text model on the CPU).
"""

from __future__ import annotations

import threading
import time

import pytest

from avala_infer import Avala
from avala_infer.types import Text
from tests.conftest import ASSETS, need
from tests.webhook_receivers import Receiver

MODELS = {"text_classification": "sentiment-minilm-sst2"}
QUIET_S = 1.5  # how long a reading client is watched: a dispatcher would claim the due deliveries at once


def started_since(before: set[threading.Thread]) -> list[str]:
    """Names of the threads alive now that were not before, less webhook request threads of dispatchers that
    other tests' clients may have left running (ours would need a dispatcher thread first, which is counted)."""
    return sorted(
        t.name
        for t in set(threading.enumerate()) - before
        if t.is_alive() and not t.name.startswith("avala-infer-delivery-")
    )


def background(before: set[threading.Thread]) -> list[str]:
    """The client's own background threads started since ``before`` (a worker, a dispatcher)."""
    return [name for name in started_since(before) if name in ("avala-infer-dispatcher", "avala-infer-worker")]


def wait_for(condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def home_with_pending_deliveries(tmp_path):
    """A text project of four tasks and a push agent to a live receiver, with two task.completed deliveries
    pending (written by a client without background threads): (home, project uid, tasks, receiver)."""
    need(ASSETS / "models" / "sentiment-minilm-sst2")
    home = tmp_path / "home"
    receiver = Receiver()
    with Avala(home=home, worker=False) as writer:
        project = writer.projects.create("notes", data_type="text", models=MODELS)
        writer.projects.import_items(project.uid, [Text("great"), Text("awful"), Text("fine"), Text("meh")])
        tasks = [t.uid for t in writer.tasks.list(project=project.uid)]
        agent = writer.agents.create(
            name="hook", events=["task.completed", "auto_label.completed"], callback_url=receiver.url
        )
        writer.tasks.complete(tasks[0])
        writer.tasks.complete(tasks[1])
        assert writer.agents.get(agent.uid).execution_stats["pending_deliveries"] == 2
    yield home, project.uid, tasks, receiver
    receiver.close()


def test_a_reading_client_starts_no_thread_and_posts_nothing(home_with_pending_deliveries):
    home, project_uid, tasks, receiver = home_with_pending_deliveries
    before = set(threading.enumerate())
    with Avala(home=home) as client:  # worker=True, the default
        assert started_since(before) == []
        assert [p.uid for p in client.projects.list()] == [project_uid]
        assert client.projects.get(project_uid).name == "notes"
        assert [t.uid for t in client.tasks.list(project=project_uid)] == tasks
        assert client.tasks.get(tasks[0]).status == "completed"
        assert list(client.auto_label_jobs.list(project=project_uid)) == []
        assert [a.name for a in client.agents.list()] == ["hook"]
        assert len(list(client.datasets.list())) == 1
        time.sleep(QUIET_S)
        assert receiver.seen() == [] and started_since(before) == []

        # the first write (a task action: an event) starts the dispatcher, and only it; it sends what was pending
        client.tasks.complete(tasks[2])
        assert background(before) == ["avala-infer-dispatcher"]
        assert wait_for(lambda: len(receiver.seen()) == 3), receiver.seen()
        assert sorted(r.json()["task"] for r in receiver.seen()) == sorted(tasks[:3])

        # the first job created starts the worker, which runs it; its event goes out through the dispatcher
        job = client.auto_label_jobs.create(project_uid, model_type="text_classification")
        assert background(before) == ["avala-infer-dispatcher", "avala-infer-worker"]
        done = client.auto_label_jobs.wait(job.uid, timeout=300)
        assert (done.status, done.successful_items) == ("completed", 4)
        assert wait_for(lambda: "auto_label.completed" in [r.event for r in receiver.seen()]), receiver.seen()
    assert wait_for(lambda: started_since(before) == [], timeout=30)  # close() stops both


def test_waiting_on_a_job_starts_the_worker(home_with_pending_deliveries):
    home, project_uid, _, receiver = home_with_pending_deliveries
    with Avala(home=home, worker=False) as other:  # queued by someone else: an `avala-infer auto-label create`
        job = other.auto_label_jobs.create(project_uid, model_type="text_classification")
    before = set(threading.enumerate())
    with Avala(home=home) as client:
        assert client.auto_label_jobs.get(job.uid).status == "pending"
        time.sleep(QUIET_S)
        assert client.auto_label_jobs.get(job.uid).status == "pending" and started_since(before) == []
        assert receiver.seen() == []
        done = client.auto_label_jobs.wait(job.uid, timeout=300)
        assert (done.status, done.successful_items) == ("completed", 4)
        assert background(before) == ["avala-infer-dispatcher", "avala-infer-worker"]
        assert wait_for(lambda: len(receiver.seen()) == 3)  # the two pending and auto_label.completed


def test_a_client_without_a_worker_never_starts_threads(home_with_pending_deliveries):
    home, project_uid, tasks, receiver = home_with_pending_deliveries
    before = set(threading.enumerate())
    with Avala(home=home, worker=False) as client:  # what the CLI uses: worker processes send and run
        client.tasks.complete(tasks[3])
        job = client.auto_label_jobs.create(project_uid, model_type="text_classification")
        assert client.auto_label_jobs.wait(job.uid, timeout=0.3).status == "pending"
        assert started_since(before) == [] and receiver.seen() == []
