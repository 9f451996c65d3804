"""Each store repository alone, over a real SQLite connection with the migrations applied (no ``Store``): items
deduplicate by key, content hash and path; jobs are claimed, leased, renewed and taken over; the event outbox
records events in order with a delivery per matching agent, and the dispatcher's side claims them in order."""

from __future__ import annotations

import json
import time

import pytest

from avala_infer.errors import ConfigError, LeaseLost, NotFoundError
from avala_infer.store.agents import AgentRepository
from avala_infer.store.db import DB_NAME, connect, transaction
from avala_infer.store.events import EventRepository
from avala_infer.store.items import ItemRepository
from avala_infer.store.jobs import JobRepository
from avala_infer.store.projects import ProjectRepository
from avala_infer.store.results import ResultRepository

ELSEWHERE = "elsewhere.example:4242:aaaaaa"  # a holder on another host: never presumed dead
OTHER = "elsewhere.example:4343:bbbbbb"


@pytest.fixture
def db(tmp_path):
    path = tmp_path / DB_NAME
    conn = connect(path)  # migrated
    yield conn, path
    conn.close()


@pytest.fixture
def events(db):
    return EventRepository(*db)


@pytest.fixture
def items(db, events):
    return ItemRepository(*db, events=events)


@pytest.fixture
def projects(db, events, items):
    return ProjectRepository(*db, events=events, items=items)


def event_types(conn) -> list[str]:
    return [row[0] for row in conn.execute("SELECT type FROM events ORDER BY id")]


def text_item(key: str, text: str) -> dict:
    return {"key": key, "text": text, "size": len(text), "content_hash": f"sha-{text}"}


# ---------------------------------------------------------------------------------------------------- items
def test_items_dedup_by_key_and_content_hash(db, items, projects):
    conn, _ = db
    project = projects.create("texts", data_type="text")["uid"]
    dataset = items.project_dataset(project)["uid"]

    first = items.add(project, [text_item("a.txt", "alpha"), text_item("b.txt", "beta")])
    again = items.add(project, [text_item("a.txt", "alpha"), text_item("b.txt", "beta")])
    changed = items.add(project, [text_item("a.txt", "ALPHA")])  # another content under a taken key

    assert first == {"created": 2, "existing": 0}
    assert again == {"created": 0, "existing": 2}
    assert changed == {"created": 1, "existing": 0}
    rows, cursor = items.list(dataset)
    assert [(r["key"], r["content_hash"]) for r in rows] == [
        ("a.txt", "sha-alpha"), ("b.txt", "sha-beta"), ("a_1.txt", "sha-ALPHA")]  # fmt: skip
    assert cursor is None
    assert items.count_tasks(project) == 3
    tasks, _ = items.list_tasks(project=project, status="pending")
    assert [t["name"] for t in tasks] == ["a.txt", "b.txt", "a_1.txt"]
    assert items.get_dataset(dataset)["item_count"] == 3
    # one task.created per new item, one dataset.updated per import that added any; none for the repeat
    assert event_types(conn) == ["task.created", "task.created", "dataset.updated", "task.created", "dataset.updated"]


def test_items_remember_a_files_hash_by_size_and_mtime(items, projects):
    project = projects.create("images")["uid"]
    dataset = items.project_dataset(project)["uid"]
    photo = {"key": "cat.jpg", "path": "/data/cat.jpg", "size": 10, "content_hash": "sha-cat", "mtime_ns": 1}
    assert items.add(project, [photo]) == {"created": 1, "existing": 0}

    assert items.known_file_hash(dataset, "/data/cat.jpg", 10, 1) == "sha-cat"
    assert items.known_file_hash(dataset, "/data/cat.jpg", 10, 2) is None  # touched since: hash it again
    # the same file touched (same bytes): not a new item, and its mtime is brought up to date
    assert items.add(project, [{**photo, "mtime_ns": 2}]) == {"created": 0, "existing": 1}
    assert items.known_file_hash(dataset, "/data/cat.jpg", 10, 2) == "sha-cat"


def test_task_status_changes_emit_their_event(db, items, projects):
    conn, _ = db
    project = projects.create("texts", data_type="text")["uid"]
    items.add(project, [text_item("a.txt", "alpha")])
    (task,), _ = items.list_tasks(project=project)

    assert items.set_task_status(task["uid"], "reviewed", "fine")["status"] == "reviewed"
    assert event_types(conn)[-1] == "task.reviewed"
    with pytest.raises(ConfigError, match="completed, reviewed or rejected"):
        items.set_task_status(task["uid"], "labeled")
    with pytest.raises(NotFoundError, match="task_nope"):
        items.set_task_status("task_nope", "completed")


# ---------------------------------------------------------------------------------------------------- jobs
@pytest.fixture
def results(db, events, items):
    return ResultRepository(*db, events=events, items=items)


@pytest.fixture
def jobs(db, events, projects, items, results):
    return JobRepository(*db, events=events, projects=projects, items=items, results=results)


@pytest.fixture
def job_project(projects, items):
    project = projects.create("texts", data_type="text", models={"text_classification": "sentiment-minilm-sst2"})
    items.add(project["uid"], [text_item("a.txt", "alpha"), text_item("b.txt", "beta")])
    return project["uid"]


def test_job_claim_lease_renew_and_take_over(jobs, job_project):
    job = jobs.create(job_project, model_type="text_classification")
    assert (job["status"], job["total_items"]) == ("pending", 2)

    held = jobs.claim(ELSEWHERE, 60.0)
    assert (held["uid"], held["status"], held["worker"], held["attempts"]) == (job["uid"], "running", ELSEWHERE, 1)
    assert jobs.claim(OTHER, 60.0) is None  # leased to a live holder on another host: not taken
    assert jobs.renew_lease(job["uid"], ELSEWHERE, 60.0) is True
    assert jobs.renew_lease(job["uid"], OTHER, 60.0) is False
    with pytest.raises(LeaseLost, match=f"no longer held by {OTHER}"):
        jobs.record_batch(held, OTHER, [], 60.0)

    assert jobs.renew_lease(job["uid"], ELSEWHERE, -1.0)  # the lease runs out
    taken = jobs.claim(OTHER, 60.0)
    assert (taken["worker"], taken["attempts"]) == (OTHER, 2)
    with pytest.raises(LeaseLost):
        jobs.record_batch(held, ELSEWHERE, [], 60.0)  # the first holder finds out at its next commit


def test_record_batch_writes_results_job_tasks_and_counters_in_one_transaction(db, jobs, results, items, job_project):
    conn, _ = db
    job = jobs.claim(ELSEWHERE, 60.0, only=jobs.create(job_project, model_type="text_classification")["uid"])
    first, second = [t["task_uid"] for t in jobs.remaining_tasks(job)]
    outcomes = [
        {"task_uid": first, "outcome": "succeeded", "label_counts": {"POSITIVE": 1}, "annotations": {"classes": []}},
        {"task_uid": second, "outcome": "failed", "error": "unreadable"},
    ]
    assert jobs.record_batch(job, ELSEWHERE, outcomes, 60.0) is False  # no cancel requested

    (result,) = results.for_task(first)
    assert (result["job_uid"], result["annotations"], result["is_draft"]) == (job["uid"], {"classes": []}, 1)
    assert results.for_task(second) == []
    assert items.get_task(first)["status"] == "labeled"
    assert items.get_task(second)["status"] == "pending"
    got = jobs.get(job["uid"])
    assert (got["processed_items"], got["successful_items"], got["failed_items"]) == (2, 1, 1)
    assert jobs.label_counts(job["uid"]) == {"POSITIVE": 1}
    assert jobs.failures(job["uid"]) == [{"task_uid": second, "key": "b.txt", "error": "unreadable"}]
    assert list(jobs.remaining_tasks(job)) == []
    assert event_types(conn)[-1] == "result.submitted"

    # a batch that fails half-way leaves nothing of itself behind
    third_job = jobs.claim(ELSEWHERE, 60.0, only=jobs.create(job_project, model_type="text_classification")["uid"])
    broken = [
        {"task_uid": first, "outcome": "succeeded", "label_counts": {}, "annotations": {"classes": []}},
        {"task_uid": second, "outcome": "succeeded", "label_counts": {}, "annotations": {"bad": object()}},
    ]
    with pytest.raises(TypeError):
        jobs.record_batch(third_job, ELSEWHERE, broken, 60.0)
    assert len(results.for_task(first)) == 1
    assert jobs.get(third_job["uid"])["processed_items"] == 0
    assert len(list(jobs.remaining_tasks(third_job))) == 2

    finished = jobs.finish(job, ELSEWHERE, "completed", summary={"model": job["model"]})
    assert (finished["status"], finished["summary"], finished["lease_until"]) == ("completed", {"model": job["model"]},
                                                                                  None)  # fmt: skip
    assert [j["uid"] for j in jobs.with_results(job_project)] == [job["uid"]]


# ---------------------------------------------------------------------------------------------------- events
@pytest.fixture
def agents(db, projects, items):
    return AgentRepository(*db, projects=projects, items=items)


def test_event_outbox_keeps_order_and_delivers_to_matching_agents_only(db, events, agents, projects):
    conn, _ = db
    mine = projects.create("mine", data_type="text")["uid"]
    other = projects.create("other", data_type="text")["uid"]
    everything = agents.create(
        name="all", events=["project.updated", "task.created"], callback_url="http://127.0.0.1/a"
    )
    scoped = agents.create(name="mine", events=["project.updated"], callback_url="http://127.0.0.1/b", project=mine)
    agents.create(name="pull", events=["project.updated"])  # no callback_url: pulled, never claimed by a dispatcher

    with transaction(conn):
        first = events.emit("project.updated", project_uid=other, data={"n": 1})
        second = events.emit("project.updated", project_uid=mine, data={"n": 2})
        third = events.emit("task.created", project_uid=mine, data={"n": 3})
    stored = conn.execute("SELECT uid, payload FROM events ORDER BY id").fetchall()
    assert [row["uid"] for row in stored] == [first, second, third]
    assert [json.loads(row["payload"])["data"]["n"] for row in stored] == [1, 2, 3]

    claimed = events.claim_deliveries("dispatcher-1", limit=10, lease_s=60.0)
    assert [(d["agent_uid"], d["event_type"]) for d in claimed] == [
        (everything["uid"], "project.updated"),
        (everything["uid"], "project.updated"),
        (scoped["uid"], "project.updated"),  # of its project only
        (everything["uid"], "task.created"),
    ]
    assert events.claim_deliveries("dispatcher-2", limit=10, lease_s=60.0) == []  # all held

    ok, retry = claimed[0], claimed[1]
    started = "2026-01-01T00:00:00.000+00:00"
    assert events.record_attempt(ok["uid"], "dispatcher-1", ok=True, started_at=started, response_status=200)
    assert not events.record_attempt(ok["uid"], "dispatcher-2", ok=True, started_at=started)  # not its holder
    assert events.record_attempt(retry["uid"], "dispatcher-1", ok=False, started_at=started, response_status=503,
                                 retry_at=time.time() - 1)  # fmt: skip
    again = events.claim_deliveries("dispatcher-2", limit=10, lease_s=60.0)
    assert [(d["uid"], d["attempts"]) for d in again] == [(retry["uid"], 1)]  # the same delivery, due again
    statuses = dict(conn.execute("SELECT uid, status FROM deliveries").fetchall())
    assert statuses[ok["uid"]] == "succeeded"
    assert agents.execution_stats(everything["uid"])["total"] == 2


def test_emit_refuses_an_unknown_event_type(db, events):
    conn, _ = db
    with pytest.raises(ValueError, match="unknown event type"), transaction(conn):
        events.emit("project.exploded")
    assert event_types(conn) == []
