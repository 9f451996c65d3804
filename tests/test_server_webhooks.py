"""Issue 12: webhooks and webhook deliveries over HTTP. The official Avala SDK (``avala==0.10.0``), unmodified,
creates, reads, updates, deletes and tests webhook subscriptions on a real ``avala_infer.server`` app served by
uvicorn on 127.0.0.1, and reads their deliveries; events caused through the local client are sent by the app's
dispatcher to real receivers on 127.0.0.1 (http.server threads recording every request), signed with the
subscription's secret, and checked as a receiver would (HMAC-SHA256 of the raw body). No mocks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

pytest.importorskip("fastapi", reason="the server extra: pip install -e '.[server]'")
avala = pytest.importorskip("avala", reason="the official SDK is a test extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx")

from avala_infer import Avala  # noqa: E402
from avala_infer.server.app import create_app  # noqa: E402
from tests.server_helpers import KEY, Served, ThreadServer, avala_cli, make_store  # noqa: E402
from tests.webhook_receivers import Receiver, answers, refused_url  # noqa: E402

N_IMAGES = 6  # one task per test that completes one


@pytest.fixture(scope="module")
def served(tmp_path_factory, val_images):
    images = sorted(val_images.glob("*.jpg"))[:N_IMAGES]
    home = tmp_path_factory.mktemp("webhooks") / "home"
    project = make_store(home, images)
    server = ThreadServer(create_app(home, [KEY])).start()  # its client runs the dispatcher
    try:
        yield Served(home=home, port=server.port, project=project, images=images)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pending_tasks(served) -> Iterator[str]:
    """Tasks not yet completed, handed out one per call of ``next()``."""
    with Avala(home=served.home, worker=False) as local:
        uids = [t.uid for t in local.tasks.list(project=served.project)]
    return iter(uids)


@pytest.fixture
def hooks(sdk) -> Iterator[list[str]]:
    """Uids of the webhooks a test creates, deleted at its end (so none keeps receiving the next tests' events)."""
    made: list[str] = []
    yield made
    for uid in made:
        try:
            sdk.webhooks.delete(uid)
        except avala.errors.NotFoundError:
            pass


def raw(served, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(
        method, served.base_url + path, headers={"X-Avala-Api-Key": KEY}, follow_redirects=False, timeout=30, **kwargs
    )


def complete_task(served, task_uid: str) -> None:
    """A person completes a task, through the local client (another connection to the store than the server's):
    a ``task.completed`` event, which the server's dispatcher finds in the shared store."""
    with Avala(home=served.home, worker=False) as local:
        local.tasks.complete(task_uid)


def wait_for(check: Callable[[], object], what: str, timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def deliveries_of(sdk, subscription: str) -> list:
    """Every delivery of ``subscription``, through the SDK's pages (``limit=2``: several pages)."""
    out, cursor = [], None
    while True:
        page = sdk.webhook_deliveries.list(limit=2, cursor=cursor)
        out += [d for d in page.items if d.subscription == subscription]
        if not page.has_more:
            return out
        cursor = page.next_cursor


def test_crud_round_trip_with_patch_and_delete_204(sdk, served, hooks):
    made = sdk.webhooks.create(target_url="http://127.0.0.1:9/hook", events=["task.completed"], secret="s3cret")
    hooks.append(made.uid)
    assert (made.target_url, made.events, made.is_active, made.secret) == (
        "http://127.0.0.1:9/hook", ["task.completed"], True, "s3cret"
    )  # fmt: skip
    assert made.created_at is not None and made.created_at.utcoffset().total_seconds() == 0

    got = sdk.webhooks.get(made.uid)
    assert (got.uid, got.target_url, got.events, got.is_active) == (made.uid, made.target_url, made.events, True)
    assert got.secret is None  # shown once, at creation
    assert made.uid in [w.uid for w in sdk.webhooks.list().items]

    changed = sdk.webhooks.update(
        made.uid, target_url="http://127.0.0.1:10/other", events=["task.reviewed", "auto_label.completed"],
        is_active=False,
    )  # fmt: skip
    assert (changed.target_url, changed.events, changed.is_active) == (
        "http://127.0.0.1:10/other", ["task.reviewed", "auto_label.completed"], False
    )  # fmt: skip
    assert changed.updated_at >= made.updated_at
    again = sdk.webhooks.get(made.uid)
    assert (again.target_url, again.events, again.is_active) == (changed.target_url, changed.events, False)
    assert sdk.webhooks.update(made.uid, is_active=True).events == changed.events  # PATCH changes only what it sends

    deleted = raw(served, "DELETE", f"/webhooks/{made.uid}/")
    assert (deleted.status_code, deleted.content) == (204, b"")
    with pytest.raises(avala.errors.NotFoundError, match="no webhook"):
        sdk.webhooks.get(made.uid)
    assert made.uid not in [w.uid for w in sdk.webhooks.list().items]
    second = sdk.webhooks.create(target_url="http://127.0.0.1:9/hook", events=["task.completed"])
    assert len(second.secret) >= 32  # generated when not given
    assert sdk.webhooks.delete(second.uid) is None  # the SDK's own DELETE (it fails on a 200 with an empty body)
    with pytest.raises(avala.errors.NotFoundError):
        sdk.webhooks.delete(second.uid)


def test_list_pages_through_the_cursor(sdk, hooks):
    before = [w.uid for w in sdk.webhooks.list().items]
    for n in range(3):
        hooks.append(sdk.webhooks.create(target_url=f"http://127.0.0.1:9/h{n}", events=["task.completed"]).uid)
    seen, cursor = [], None
    while True:
        page = sdk.webhooks.list(limit=2, cursor=cursor)
        assert len(page.items) <= 2
        seen += [w.uid for w in page.items]
        if not page.has_more:
            break
        cursor = page.next_cursor
    assert seen == before + hooks


def test_test_sends_a_signed_test_event_now(sdk, served, hooks):
    with Receiver() as receiver:
        webhook = sdk.webhooks.create(target_url=receiver.url, events=["task.completed"], secret="test-secret")
        hooks.append(webhook.uid)
        answer = sdk.webhooks.test(webhook.uid)
        assert answer["success"] is True and answer["status_code"] == 200, answer
        assert "200" in answer["message"] and answer["latency_ms"] >= 0
        [received] = receiver.seen()  # sent before the answer, once
    assert received.path == "/hook" and received.event == "agent.test"
    assert received.signed_by("test-secret") and not received.signed_by("another secret")
    assert received.json()["event"] == "agent.test" and received.json()["data"]["agent"] == webhook.uid

    unreachable = sdk.webhooks.create(target_url=refused_url(), events=["task.completed"])
    hooks.append(unreachable.uid)
    answer = sdk.webhooks.test(unreachable.uid)
    assert answer["success"] is False and answer["status_code"] is None
    assert "connection refused" in answer["message"]

    with pytest.raises(avala.errors.NotFoundError, match="no webhook 'nope'"):
        sdk.webhooks.test("nope")


def test_the_avala_cli_tests_and_lists_webhooks(sdk, served, hooks):
    with Receiver() as receiver:
        webhook = sdk.webhooks.create(target_url=receiver.url, events=["task.completed"])
        hooks.append(webhook.uid)
        tested = avala_cli(served, "webhooks", "test", webhook.uid)
        assert tested.returncode == 0, tested.stderr
        assert "Webhook test passed." in tested.stdout
        assert [r.event for r in receiver.seen()] == ["agent.test"]
    listed = avala_cli(served, "-o", "json", "webhooks", "list")
    assert listed.returncode == 0, listed.stderr
    mine = [w for w in json.loads(listed.stdout) if w["uid"] == webhook.uid]
    assert [(w["target_url"], w["events"]) for w in mine] == [(receiver.url, "task.completed")]  # joined by ", "


def test_a_real_event_is_delivered_signed_and_listed(sdk, served, hooks, pending_tasks):
    task = next(pending_tasks)
    with Receiver() as receiver:
        webhook = sdk.webhooks.create(target_url=receiver.url, events=["task.completed"], secret="real-secret")
        hooks.append(webhook.uid)
        complete_task(served, task)
        received = wait_for(lambda: receiver.seen(), "the task.completed delivery")[0]
        assert received.event == "task.completed" and received.signed_by("real-secret")
        body = received.json()
        assert body["event"] == "task.completed" and task in body.values()

        def delivered():
            found = deliveries_of(sdk, webhook.uid)
            return found if found and found[0].status == "delivered" else None

        [delivery] = wait_for(delivered, "the delivery recorded as delivered")
    assert delivery.uid == received.delivery  # X-Avala-Webhook-Delivery names it
    assert (delivery.subscription, delivery.event_type, delivery.response_status) == (
        webhook.uid, "task.completed", 200
    )  # fmt: skip
    assert delivery.attempts >= 1 and delivery.next_retry_at is None
    assert delivery.payload == body  # the event as sent
    assert delivery.response_body == '{"ok": true}'
    assert delivery.created_at is not None and delivery.updated_at >= delivery.created_at

    one = sdk.webhook_deliveries.get(delivery.uid)
    assert (one.uid, one.subscription, one.status, one.attempts) == (delivery.uid, webhook.uid, "delivered", 1)
    as_json = raw(served, "GET", f"/webhook-deliveries/{delivery.uid}/").json()
    assert as_json["event"] == as_json["event_type"] == "task.completed"  # the docs' name too
    assert as_json["created_at"].endswith("Z")
    only = raw(served, "GET", f"/webhook-deliveries/?subscription={webhook.uid}").json()["results"]
    assert [d["uid"] for d in only] == [delivery.uid]
    with pytest.raises(avala.errors.NotFoundError, match="no webhook delivery"):
        sdk.webhook_deliveries.get("no-such-delivery")


def test_a_failing_receiver_shows_attempts_and_the_next_retry(sdk, served, hooks, pending_tasks):
    task = next(pending_tasks)
    with Receiver(answers(500)) as receiver:
        webhook = sdk.webhooks.create(target_url=receiver.url, events=["task.completed"])
        hooks.append(webhook.uid)
        complete_task(served, task)

        def retrying():
            found = deliveries_of(sdk, webhook.uid)
            return found if found and found[0].status == "retrying" else None

        [delivery] = wait_for(retrying, "a delivery waiting for its retry")
        assert len(receiver.seen()) >= delivery.attempts >= 1
        assert all(r.delivery == delivery.uid for r in receiver.seen())  # every attempt: the same delivery uid
    assert delivery.response_status == 500 and delivery.response_body.endswith(": 500")
    assert delivery.next_retry_at is not None and delivery.next_retry_at >= delivery.created_at
    raw_one = raw(served, "GET", f"/webhook-deliveries/{delivery.uid}/").json()
    assert raw_one["status"] in ("retrying", "sending") and raw_one["error_message"].startswith("HTTP 500")
    assert raw_one["attempts"] >= 1


def test_a_disallowed_target_url_is_a_400_naming_the_rule(sdk, served, hooks):
    with pytest.raises(avala.errors.ValidationError) as refused:
        sdk.webhooks.create(target_url="http://169.254.169.254/latest/meta-data/", events=["task.completed"])
    assert refused.value.status_code == 400
    assert "169.254.0.0/16" in refused.value.message and "AVALA_INFER_CALLBACK_ALLOW" in refused.value.message
    answer = raw(served, "POST", "/webhooks/", json={"target_url": "http://metadata.google.internal/", "events": []})
    assert answer.status_code == 400 and isinstance(answer.json()["detail"], str)

    webhook = sdk.webhooks.create(target_url="http://127.0.0.1:9/hook", events=["task.completed"])
    hooks.append(webhook.uid)
    with pytest.raises(avala.errors.ValidationError, match="169.254"):
        sdk.webhooks.update(webhook.uid, target_url="http://169.254.169.254/")
    assert sdk.webhooks.get(webhook.uid).target_url == "http://127.0.0.1:9/hook"  # unchanged

    for body, says in [
        ({"target_url": "ftp://127.0.0.1/x", "events": ["task.completed"]}, "http"),
        ({"target_url": "http://127.0.0.1:9/", "events": ["task.finished"]}, "unknown event type"),
        ({"target_url": "http://127.0.0.1:9/", "events": []}, "one or more event types"),
        ({"target_url": "", "events": ["task.completed"]}, "needs a target_url"),
    ]:
        answer = raw(served, "POST", "/webhooks/", json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert says in answer.json()["detail"], answer.json()
    answer = raw(served, "POST", "/webhooks/", json={"events": ["task.completed"]})
    assert answer.status_code == 422 and "target_url" in answer.json()["detail"]


def test_webhooks_and_agents_are_listed_apart(sdk, served, hooks, pending_tasks):
    with Avala(home=served.home, worker=False) as local:
        agent = local.agents.create(name="reviewer", events=["task.completed"])  # a pull agent
        webhook = sdk.webhooks.create(target_url="http://127.0.0.1:9/hook", events=["task.completed"])
        hooks.append(webhook.uid)
        assert agent.uid in [a.uid for a in local.agents.list()]
        assert webhook.uid not in [a.uid for a in local.agents.list()]
        assert [w.uid for w in local.webhooks.list()] == [w.uid for w in sdk.webhooks.list().items]
    over_http = [a.uid for a in sdk.agents.list().items]
    assert agent.uid in over_http and webhook.uid not in over_http
    assert agent.uid not in [w.uid for w in sdk.webhooks.list().items]
    with pytest.raises(avala.errors.NotFoundError, match="no webhook"):
        sdk.webhooks.get(agent.uid)
    with pytest.raises(avala.errors.NotFoundError):
        sdk.webhooks.delete(agent.uid)
    for call in (sdk.agents.get, sdk.agents.delete, lambda uid: sdk.agents.update(uid, callback_url="")):
        with pytest.raises(avala.errors.NotFoundError, match="webhook subscription"):
            call(webhook.uid)  # an agents row of kind webhook is not an agent: nothing reaches it through /agents/
    assert sdk.webhooks.get(webhook.uid).target_url == "http://127.0.0.1:9/hook"

    complete_task(served, next(pending_tasks))  # a delivery for the agent (pulled) and one for the webhook
    subscriptions = {d.subscription for d in sdk.webhook_deliveries.list(limit=1000).items}
    assert agent.uid not in subscriptions
    assert raw(served, "GET", f"/webhook-deliveries/?subscription={agent.uid}").status_code == 404
    with Avala(home=served.home, worker=False) as local:
        assert local.agents.get(agent.uid).execution_stats["pending_deliveries"] == 1  # the agent still has its own
        local.agents.delete(agent.uid)
