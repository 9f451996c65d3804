"""Issue 5, points 3, 4 and 6: signed webhook deliveries to real HTTP receivers on 127.0.0.1, retried with backoff
on network errors, timeouts, 5xx and 429 (honouring Retry-After), failed at once on other 4xx, every attempt
recorded as an execution; filters; events caused by real actions (imports, a real auto-label job, the human side
of the workflow); ``agents.test()``; the dispatcher as a thread, as a command, and killed with SIGKILL mid-delivery.

Retry spacing is shortened (backoff of 10-50 ms) through the dispatcher's settings, never by patching.
"""

from __future__ import annotations

import collections
import email.utils
import hashlib
import hmac
import json
import random
import subprocess
import sys
import threading
import time
import uuid

import click
import pytest
from click.testing import CliRunner

from avala_infer import __version__
from avala_infer.agents import Dispatcher, RetryPolicy, deliver_test, parse_retry_after, sign
from avala_infer.cli.workers import dispatcher_command
from avala_infer.errors import ConfigError
from avala_infer.jobs import Worker
from avala_infer.projects.imports import import_sources
from avala_infer.store import EVENT_TYPES, Store
from avala_infer.types import Text
from tests.conftest import ASSETS, REPO, need
from tests.webhook_receivers import Receiver, answers, held, refused_url, slow

FAST = {"poll_s": 0.02, "lease_s": 5.0, "timeout_s": 2.0, "backoff_base_s": 0.01, "backoff_cap_s": 0.05}


def dispatch(home, **settings) -> int:
    """One dispatcher run until every delivery has succeeded or failed; the attempts it recorded."""
    return Dispatcher(home, **{**FAST, **settings}).run(until_idle=True)


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def store(home):
    store = Store(home)
    yield store
    store.close()


def text_project(store: Store, name: str = "texts") -> str:
    return store.projects.create(name, data_type="text", models={"text_classification": "sentiment-minilm-sst2"})["uid"]


def add_texts(store: Store, project: str, *texts: str) -> list[str]:
    """Import ``texts``; the uids of their tasks, in order."""
    report = import_sources(store, project, [Text(t) for t in texts])
    assert report.created == len(texts), report
    tasks, _ = store.items.list_tasks(project=project, limit=1000)
    return [t["uid"] for t in tasks][-len(texts) :]


def executions(store: Store, agent_uid: str) -> list[dict]:
    rows, _ = store.agents.list_executions(agent_uid, limit=1000)
    return rows


def deliveries(store: Store, agent_uid: str) -> list[dict]:
    rows = store.conn.execute(
        "SELECT d.*, e.type, e.payload FROM deliveries d JOIN events e ON e.uid = d.event_uid WHERE d.agent_uid = ? "
        "ORDER BY d.id",
        (agent_uid,),
    ).fetchall()
    return [dict(r) for r in rows]


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
    return value


# ---------------------------------------------------------------------------------------------- signing, headers
def test_a_delivery_is_signed_with_the_agents_secret_and_carries_the_stored_payload(store, home):
    project = text_project(store)
    with Receiver() as receiver:
        made = store.agents.create(name="made", events=["project.updated"], callback_url=receiver.url + "/made")
        given = store.agents.create(
            name="given", events=["project.updated"], callback_url=receiver.url + "/given", secret="s3cr3t"
        )
        assert (
            given["secret"] == "s3cr3t" and len(made["secret"]) >= 32 and "secret" not in store.agents.get(made["uid"])
        )
        store.projects.update(project, name="renamed")
        assert dispatch(home) == 2
        seen = {r.path: r for r in receiver.seen()}

    assert sorted(seen) == ["/hook/given", "/hook/made"]
    for agent, received in ((made, seen["/hook/made"]), (given, seen["/hook/given"])):
        (delivery,) = deliveries(store, agent["uid"])
        assert received.signed_by(agent["secret"])
        other = given if agent is made else made
        assert not received.signed_by(other["secret"])
        expected = hmac.new(agent["secret"].encode(), received.body, hashlib.sha256).hexdigest()
        assert received.headers["x-avala-webhook-signature"] == expected == sign(agent["secret"], received.body)
        assert received.headers["content-type"] == "application/json"
        assert received.headers["user-agent"] == f"avala-infer/{__version__}"
        assert received.event == "project.updated"
        assert received.delivery == delivery["uid"] and str(uuid.UUID(received.delivery)) == received.delivery
        assert received.body == delivery["payload"].encode("utf-8")  # the raw stored payload, byte for byte
        body = received.json()
        assert (body["event"], body["project"], body["data"]) == ("project.updated", project, {"changed": ["name"]})
        assert body["task_types"] == ["text_classification"] and body["event_id"].startswith("evt_")
        (execution,) = executions(store, agent["uid"])
        assert execution["status"] == "succeeded" and execution["response_status"] == 200
        assert execution["delivery_uid"] == delivery["uid"] and execution["event_type"] == "project.updated"
        assert execution["response_excerpt"] == '{"ok": true}' and execution["error"] is None
        assert execution["started_at"] <= execution["completed_at"]
        assert delivery["status"] == "succeeded" and delivery["attempts"] == 1
        stats = store.agents.execution_stats(agent["uid"])
        assert (stats["total"], stats["succeeded"], stats["pending_deliveries"]) == (1, 1, 0)
    assert seen["/hook/made"].delivery != seen["/hook/given"].delivery  # one delivery per agent and event


# ---------------------------------------------------------------------------------------------- retries
def test_500_twice_then_200_is_retried_with_the_same_delivery_id(store, home):
    project = text_project(store)
    with Receiver(answers(500, 500, 200)) as receiver:
        agent = store.agents.create(name="flaky", events=["project.updated"], callback_url=receiver.url)
        store.projects.update(project, name="renamed")
        assert dispatch(home) == 3
        seen = receiver.seen()

    (delivery,) = deliveries(store, agent["uid"])
    assert [r.delivery for r in seen] == [delivery["uid"]] * 3
    assert len({r.body for r in seen}) == 1 and all(r.signed_by(agent["secret"]) for r in seen)
    runs = executions(store, agent["uid"])
    assert [e["status"] for e in runs] == ["failed", "failed", "succeeded"]
    assert [e["response_status"] for e in runs] == [500, 500, 200]
    assert [e["response_excerpt"] for e in runs] == ["answer 0: 500", "answer 1: 500", "answer 2: 200"]
    assert runs[0]["error"] == runs[1]["error"] == "HTTP 500 Internal Server Error" and runs[2]["error"] is None
    assert {e["delivery_uid"] for e in runs} == {delivery["uid"]}
    assert (delivery["status"], delivery["attempts"]) == ("succeeded", 3)
    stats = store.agents.execution_stats(agent["uid"])
    assert stats == {"total": 3, "failed": 2, "succeeded": 1, "pending_deliveries": 0}
    assert stats["total"] == sum(v for k, v in stats.items() if k not in ("total", "pending_deliveries"))
    assert store.agents.get(agent["uid"])["execution_stats"] == stats


def test_a_receiver_slower_than_the_timeout_is_retried_then_fails(store, home):
    project = text_project(store)
    with Receiver(slow(3.0)) as receiver:
        agent = store.agents.create(name="slow", events=["project.updated"], callback_url=receiver.url)
        store.projects.update(project, name="renamed")
        started = time.monotonic()
        assert dispatch(home, timeout_s=0.3, max_attempts=2) == 2
        took = time.monotonic() - started
        assert len(receiver.seen()) == 2

    assert took < 2.5, f"two attempts took {took:.2f}s: the 0.3 s timeout did not cut the 3 s answers"
    runs = executions(store, agent["uid"])
    assert [e["status"] for e in runs] == ["failed", "failed"]
    assert all("timed out after 0.3s" in e["error"] and e["response_status"] is None for e in runs)
    assert runs[-1]["error"].endswith("gave up after 2 attempt(s)") and "gave up" not in runs[0]["error"]
    (delivery,) = deliveries(store, agent["uid"])
    assert (delivery["status"], delivery["attempts"]) == ("failed", 2)
    assert store.agents.execution_stats(agent["uid"]) == {"total": 2, "failed": 2, "pending_deliveries": 0}


def test_a_receiver_that_is_down_is_retried_then_fails(store, home):
    project = text_project(store)
    agent = store.agents.create(name="down", events=["project.updated"], callback_url=refused_url())
    store.projects.update(project, name="renamed")
    assert dispatch(home, max_attempts=3) == 3
    runs = executions(store, agent["uid"])
    assert [e["status"] for e in runs] == ["failed"] * 3
    assert all("connection refused" in e["error"] and e["response_status"] is None for e in runs)
    assert runs[-1]["error"].endswith("gave up after 3 attempt(s)")
    (delivery,) = deliveries(store, agent["uid"])
    assert (delivery["status"], delivery["attempts"]) == ("failed", 3)


def test_429_waits_as_long_as_retry_after_asks(store, home):
    project = text_project(store)
    with Receiver(answers(429, 200, headers={"Retry-After": "1"})) as receiver:
        agent = store.agents.create(name="busy", events=["project.updated"], callback_url=receiver.url)
        store.projects.update(project, name="renamed")
        assert dispatch(home) == 2  # backoff alone would wait at most 50 ms
        first, second = receiver.seen()

    assert first.delivery == second.delivery
    assert 0.95 <= second.at - first.at < 3.0, f"retried after {second.at - first.at:.2f}s, Retry-After said 1 s"
    runs = executions(store, agent["uid"])
    assert [(e["status"], e["response_status"]) for e in runs] == [("failed", 429), ("succeeded", 200)]
    assert runs[0]["error"] == "HTTP 429 Too Many Requests"


def test_retry_after_reads_seconds_and_http_dates():
    now = time.time()
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("") is None and parse_retry_after("soon") is None
    policy = RetryPolicy(backoff_cap_s=0.05, retry_after_cap_s=120)
    from avala_infer.agents.delivery import Outcome

    assert policy.delay(1, Outcome("", 0.0, status=429, retry_after_s=9)) == 9
    assert policy.delay(1, Outcome("", 0.0, status=503, retry_after_s=10_000)) == 120


def test_backoff_is_exponential_with_full_jitter_and_capped():
    policy = RetryPolicy(backoff_base_s=1.0, backoff_factor=2.0, backoff_cap_s=300.0)
    rng = random.Random(0)
    for attempt in range(1, 13):
        ceiling = min(300.0, 2.0 ** (attempt - 1))
        draws = [policy.backoff(attempt, rng) for _ in range(400)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.9 * ceiling and min(draws) < 0.1 * ceiling  # spread over the whole range
    with pytest.raises(ConfigError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigError, match="outlast the request timeout"):
        Dispatcher("unused", lease_s=5, timeout_s=10)


def test_a_400_fails_at_once(store, home):
    project = text_project(store)
    with Receiver(answers(400)) as receiver:
        agent = store.agents.create(name="refuses", events=["project.updated"], callback_url=receiver.url)
        store.projects.update(project, name="renamed")
        assert dispatch(home) == 1
        assert len(receiver.seen()) == 1
    (run,) = executions(store, agent["uid"])
    assert (run["status"], run["response_status"], run["response_excerpt"]) == ("failed", 400, "answer 0: 400")
    assert run["error"].startswith("HTTP 400 Bad Request: not retried")
    (delivery,) = deliveries(store, agent["uid"])
    assert (delivery["status"], delivery["attempts"]) == ("failed", 1)


# ---------------------------------------------------------------------------------------------- who receives what
def test_an_inactive_agent_receives_nothing(store, home):
    project = text_project(store)
    with Receiver() as receiver:
        inactive = store.agents.create(
            name="off", events=["project.updated"], callback_url=receiver.url + "/off", is_active=False
        )
        paused = store.agents.create(name="paused", events=["project.updated"], callback_url=receiver.url + "/paused")
        store.projects.update(project, name="one")  # off: no delivery at all; paused: one, not sent while paused
        store.agents.update(paused["uid"], is_active=False)
        store.projects.update(project, name="two")
        assert dispatch(home) == 0
        assert receiver.seen() == []
    assert deliveries(store, inactive["uid"]) == [] and executions(store, inactive["uid"]) == []
    assert executions(store, paused["uid"]) == []


def test_project_and_task_types_filters(store, home):
    texts = text_project(store, "texts")
    images = store.projects.create("images", models={"object_detection": "yolo11n-onnx"})["uid"]
    with Receiver() as receiver:
        wanted = {
            "all": {},
            "texts": {"project": texts},
            "images": {"project": images},
            "textcls": {"task_types": ["text_classification"]},
            "detect": {"task_types": ["object_detection", "instance_segmentation"]},
            "ner": {"task_types": ["named_entity_recognition"]},
            "texts-ner": {"project": texts, "task_types": ["named_entity_recognition"]},
        }
        for name, filters in wanted.items():
            store.agents.create(name=name, events=["project.updated"], callback_url=f"{receiver.url}/{name}", **filters)
        store.projects.update(texts, name="texts 2")
        store.projects.update(images, name="images 2")
        assert dispatch(home) == 6
        got = collections.defaultdict(list)
        for received in receiver.seen():
            got[received.path.rsplit("/", 1)[1]].append(received.json()["project"])

    assert {name: sorted(projects) for name, projects in got.items()} == {
        "all": sorted([texts, images]),
        "texts": [texts],
        "images": [images],
        "textcls": [texts],
        "detect": [images],
    }


# ---------------------------------------------------------------------------------------------- events of real actions
def test_imports_and_the_human_side_of_the_workflow_send_their_events(store, home):
    project = text_project(store)
    with Receiver() as receiver:
        agent = store.agents.create(name="everything", events=list(EVENT_TYPES), callback_url=receiver.url)
        first, second = add_texts(store, project, "a fine day", "a grim night")
        store.items.set_task_status(first, "completed")
        store.items.set_task_status(first, "reviewed")
        store.items.set_task_status(second, "rejected", reason="off topic")
        store.projects.update(project, ontology=["positive", "negative"])
        assert dispatch(home) == 7
        seen = receiver.seen()

    assert all(r.signed_by(agent["secret"]) for r in seen)
    bodies = {(r.event, r.json()["task"]): r.json() for r in seen}
    assert sorted(bodies) == sorted(
        [("task.created", first), ("task.created", second), ("dataset.updated", None), ("task.completed", first),
         ("task.reviewed", first), ("task.rejected", second), ("project.updated", None)]
    )  # fmt: skip
    assert bodies[("task.created", first)]["data"]["key"] and bodies[("task.created", first)]["project"] == project
    assert bodies[("dataset.updated", None)]["data"]["items_added"] == 2
    assert bodies[("task.rejected", second)]["data"] == {"status": "rejected", "reason": "off topic"}
    assert bodies[("project.updated", None)]["data"] == {"changed": ["ontology"]}
    assert [store.items.get_task(t)["status"] for t in (first, second)] == ["reviewed", "rejected"]
    assert store.agents.execution_stats(agent["uid"]) == {"total": 7, "succeeded": 7, "pending_deliveries": 0}


@pytest.mark.assets
def test_a_real_auto_label_job_sends_its_events(store, home):
    images = [need(ASSETS / "images" / "ultralytics" / name) for name in ("bus.jpg", "zidane.jpg")]
    good = store.projects.create("streets", models={"object_detection": "yolo11n-onnx"})["uid"]
    broken = store.projects.create("broken", models={"object_detection": "no-such-model"})["uid"]
    with Receiver() as receiver:
        events = ["result.submitted", "result.accepted", "result.rejected", "auto_label.completed", "auto_label.failed"]
        agent = store.agents.create(
            name="jobs", events=events, callback_url=receiver.url, task_types=["object_detection"]
        )
        for project in (good, broken):
            assert import_sources(store, project, [str(p) for p in images]).created == 2
        good_job = store.jobs.create(good, model_type="object_detection", confidence_threshold=0.25)["uid"]
        broken_job = store.jobs.create(broken, model_type="object_detection")["uid"]
        assert Worker(home, device="cpu").run(until_idle=True) == 2
        assert store.jobs.get(good_job)["status"] == "completed" and store.jobs.get(broken_job)["status"] == "failed"
        tasks, _ = store.items.list_tasks(project=good)
        accepted, rejected = (store.results.for_task(t["uid"])[0] for t in tasks)
        store.results.review(accepted["uid"], accept=True)
        store.results.review(rejected["uid"], accept=False, reason="missed a person")
        assert dispatch(home) == 6
        seen = receiver.seen()

    assert all(r.signed_by(agent["secret"]) for r in seen)
    by_event = collections.defaultdict(list)
    for received in seen:
        by_event[received.event].append(received.json())
    assert {k: len(v) for k, v in by_event.items()} == {
        "result.submitted": 2, "auto_label.completed": 1, "auto_label.failed": 1, "result.accepted": 1,
        "result.rejected": 1,
    }  # fmt: skip
    submitted = {b["task"]: b["data"] for b in by_event["result.submitted"]}
    assert sorted(submitted) == sorted(t["uid"] for t in tasks)
    assert {d["result"] for d in submitted.values()} == {accepted["uid"], rejected["uid"]}
    assert all(d["job"] == good_job and d["model"] == "yolo11n-onnx" and d["is_draft"] for d in submitted.values())
    assert sum(sum(d["label_counts"].values()) for d in submitted.values()) > 0
    (completed,) = by_event["auto_label.completed"]
    assert completed["project"] == good and completed["task_types"] == ["object_detection"]
    assert completed["data"]["job"]["uid"] == good_job and completed["data"]["job"]["successful_items"] == 2
    (failed,) = by_event["auto_label.failed"]
    assert failed["project"] == broken and failed["data"]["job"]["uid"] == broken_job
    assert "no-such-model" in failed["data"]["job"]["error_message"]
    assert by_event["result.accepted"][0]["data"]["result"] == accepted["uid"]
    assert by_event["result.rejected"][0]["data"] == {
        "result": rejected["uid"], "model": "yolo11n-onnx", "reason": "missed a person"
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- agents.test()
def test_deliver_test_sends_a_signed_test_event_now(store):
    with Receiver(answers(204, 500)) as receiver:
        agent = store.agents.create(name="new", events=["task.created"], callback_url=receiver.url, is_active=False)
        result = deliver_test(store, agent["uid"])
        assert result["success"] is True and result["status_code"] == 204 and result["latency_ms"] > 0
        assert "HTTP 204" in result["message"]
        (received,) = receiver.seen()
        assert received.event == "agent.test" and received.signed_by(agent["secret"])
        assert str(uuid.UUID(received.delivery)) == received.delivery
        body = received.json()
        assert body["event"] == "agent.test" and body["data"]["agent"] == agent["uid"]
        again = deliver_test(store, agent["uid"], timeout=2)
        assert (again["success"], again["status_code"]) == (False, 500) and "HTTP 500" in again["message"]
        assert receiver.seen()[1].delivery != received.delivery  # a fresh delivery id per test
    runs = executions(store, agent["uid"])
    assert [(e["event_type"], e["status"], e["response_status"]) for e in runs] == [
        ("agent.test", "succeeded", 204),
        ("agent.test", "failed", 500),
    ]
    assert runs[0]["delivery_uid"] == received.delivery

    down = store.agents.create(name="down", events=["task.created"], callback_url=refused_url())
    result = deliver_test(store, down["uid"], timeout=2)
    assert (result["success"], result["status_code"]) == (False, None) and "connection refused" in result["message"]
    pull = store.agents.create(name="pull", events=["task.created"])
    result = deliver_test(store, pull["uid"])
    assert result["success"] is False and "pull mode" in result["message"]


# ---------------------------------------------------------------------------------------------- the dispatcher
def test_the_dispatcher_thread_sends_in_the_background_without_holding_up_the_store(store, home):
    """Four requests held open by the receiver do not slow an import of 200 items on the same store."""
    project = text_project(store)
    gate = threading.Event()
    with Receiver(held(gate)) as receiver:
        store.agents.create(name="held", events=["task.created"], callback_url=receiver.url)
        add_texts(store, project, *(f"text {n}" for n in range(6)))
        dispatcher = Dispatcher(home, concurrency=4, **FAST).start()
        try:
            wait_until(lambda: receiver.in_flight == 4, 10, "four requests in flight")
            started = time.monotonic()
            add_texts(store, project, *(f"more {n}" for n in range(200)))
            store.projects.update(project, name="still fast")
            took = time.monotonic() - started
            time.sleep(0.2)
            assert receiver.in_flight == 4 and len(receiver.seen()) == 4  # never more than `concurrency` at once
            gate.set()
            wait_until(lambda: len(receiver.seen()) == 206, 30, "206 deliveries")
        finally:
            gate.set()
            dispatcher.stop()
        assert not dispatcher._thread.is_alive()
    assert took < 2.0, f"importing 200 items took {took:.2f}s while deliveries were in flight"
    assert dispatcher.sent == 206


def test_the_dispatcher_command(store, home):
    group = click.Group("cli")
    group.add_command(dispatcher_command)
    project = text_project(store)
    with Receiver() as receiver:
        store.agents.create(name="cli", events=["project.updated"], callback_url=receiver.url)
        store.projects.update(project, name="renamed")
        result = CliRunner().invoke(group, ["dispatcher", "--home", str(home), "--until-idle", "--poll", "0.02"])
        assert result.exit_code == 0, result.output
        assert "recorded 1 attempt(s)" in result.output
        assert [r.event for r in receiver.seen()] == ["project.updated"]
    result = CliRunner().invoke(group, ["dispatcher", "--home", str(home), "--lease", "5", "--timeout", "10"])
    assert result.exit_code == 1 and "must outlast the request timeout" in result.output


@pytest.mark.slow
def test_a_dispatcher_killed_mid_delivery_loses_nothing(store, home, tmp_path):
    """kill -9 a dispatcher process while the receiver holds its four requests open: a new dispatcher sends the
    held deliveries again once their lease runs out, with the same delivery ids, and every event arrives."""
    project = text_project(store)
    gate = threading.Event()
    with Receiver(held(gate)) as receiver:
        agent = store.agents.create(name="kill", events=["task.created", "dataset.updated"], callback_url=receiver.url)
        add_texts(store, project, *(f"text {n}" for n in range(5)))  # six events: five task.created, one dataset
        code = (
            "import sys; from avala_infer.agents.dispatcher import Dispatcher; "
            "Dispatcher(sys.argv[1], lease_s=4, timeout_s=3, poll_s=0.05, concurrency=4).run()"
        )
        with open(tmp_path / "dispatcher.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-c", code, str(home)], cwd=REPO, stdout=log, stderr=log)
        try:
            wait_until(lambda: receiver.in_flight == 4 or proc.poll() is not None, 30, "four requests in flight")
            assert proc.poll() is None, (tmp_path / "dispatcher.log").read_text()
            proc.kill()  # SIGKILL, mid-delivery: the four requests are unanswered
        finally:
            proc.kill()
            proc.wait(30)
        assert proc.returncode == -9
        held_ids = {r.delivery for r in receiver.seen()}
        assert len(held_ids) == 4
        assert executions(store, agent["uid"]) == []  # nothing recorded for the killed attempts
        gate.set()  # from now on the receiver answers 200 at once

        started = time.monotonic()
        assert dispatch(home, lease_s=4, timeout_s=3) == 6
        took = time.monotonic() - started
        seen = receiver.seen()

    assert took < 10, f"the new dispatcher took {took:.1f}s (leases of 4 s)"
    rows = deliveries(store, agent["uid"])
    assert len(rows) == 6 and {r["status"] for r in rows} == {"succeeded"}
    assert {r.delivery for r in seen} == {r["uid"] for r in rows}  # every delivery arrived
    for event_id, received in ((r.json()["event_id"], r) for r in seen):
        (row,) = (r for r in rows if json.loads(r["payload"])["event_id"] == event_id)
        assert received.delivery == row["uid"]  # one delivery id per event, on every attempt
    twice = [uid for uid, n in collections.Counter(r.delivery for r in seen).items() if n == 2]
    assert sorted(twice) == sorted(held_ids) and len(seen) == 10  # the held four again, at least once in all
    for uid in twice:
        first, second = (r for r in seen if r.delivery == uid)
        assert (
            first.body == second.body
            and first.headers["x-avala-webhook-signature"] == second.headers["x-avala-webhook-signature"]
        )
    runs = executions(store, agent["uid"])
    assert len(runs) == 6 and {e["status"] for e in runs} == {"succeeded"}
