"""Agents through the local client: the Avala docs' agent examples and their "Complete Example"
(../shared/spec/avala-automation-docs.txt) run with only the import, the ids and the callback URLs changed (to
real HTTP receivers on 127.0.0.1); CRUD, pages, validation, the secret shown once, ``test()``, pull mode
(leases, expiry, answers) and the human side of the workflow emitting the events agents are told of."""

from __future__ import annotations

import ast
import hashlib
import hmac
import http.server
import json
import shutil
import socket
import textwrap
import threading
import time
import types

import pytest

from avala_infer import Avala
from avala_infer.client.agents import Agent, AgentExecution
from avala_infer.errors import ConfigError, NotFoundError, UnsafeURLError
from avala_infer.types import Text
from tests.conftest import ASSETS, VAL_IMAGES, need

# ---------------------------------------------------------------------------------------------------- the docs' text
CREATE = """
from avala import Avala

client = Avala(api_key="your-api-key")

agent = client.agents.create(
    name="Quality Check Agent",
    description="Automatically reviews completed tasks",
    events=["task.completed"],
    callback_url="https://api.example.com/webhooks/quality-check"
)

print(f"Agent created: {agent.uid}")
"""

FILTERS = """
agent = client.agents.create(
    name="Project-Specific Agent",
    events=["task.completed", "task.reviewed"],
    callback_url="https://api.example.com/webhooks/processor",
    project="proj_abc123",
    task_types=["image_classification", "object_detection"],
    is_active=True
)
"""

TEST = """
# Test the agent configuration
result = client.agents.test(agent.uid)
print(f"Test result: {result}")
"""

LIST = """
# List all agents
agents = client.agents.list()

for agent in agents:
    print(f"{agent.name} - Active: {agent.is_active}")
"""

GET = """
agent = client.agents.get("agent_xyz789")

print(f"Name: {agent.name}")
print(f"Events: {agent.events}")
print(f"Callback URL: {agent.callback_url}")
print(f"Active: {agent.is_active}")
"""

UPDATE = """
# Update agent settings
agent = client.agents.update(
    "agent_xyz789",
    is_active=False,
    description="Updated description"
)

print(f"Agent updated: {agent.uid}")
# Change events and callback URL
agent = client.agents.update(
    "agent_xyz789",
    events=["task.completed", "task.rejected"],
    callback_url="https://api.example.com/new-webhook"
)
"""

DELETE = """
# Delete an agent
client.agents.delete("agent_xyz789")
print("Agent deleted")
"""

EXECUTIONS = """
# List executions for an agent
executions = client.agents.list_executions("agent_xyz789")

for execution in executions:
    print(f"Executed at: {execution.created_at}")
    print(f"Status: {execution.status}")
    print(f"Event: {execution.event}")
# Paginate through executions
page = client.agents.list_executions(
    "agent_xyz789",
    limit=50
)

for execution in page:
    if execution.status == "failed":
        print(f"Failed execution: {execution.error}")
"""

COMPLETE_EXAMPLE = """
from avala import Avala
import time

client = Avala(api_key="your-api-key")

# 1. Create an agent to monitor task completion
print("Setting up automation agent...")
agent = client.agents.create(
    name="Auto-Review Agent",
    description="Triggers review for high-confidence predictions",
    events=["task.completed"],
    callback_url="https://api.example.com/review",
    project="proj_abc123",
    is_active=True
)
print(f"Agent created: {agent.uid}")

# 2. Start auto-labeling
print("\\nStarting auto-label job...")
job = client.auto_label_jobs.create(
    project_uid="proj_abc123",
    model_type="object_detection",
    confidence_threshold=0.85,
    labels=["car", "truck", "pedestrian"]
)
print(f"Job UID: {job.uid}")

# 3. Monitor progress
print("\\nMonitoring job progress...")
while True:
    job = client.auto_label_jobs.get(job.uid)
    print(f"Status: {job.status} - Progress: {job.progress}%")

    if job.status == "completed":
        print(f"\\nCompleted! Labeled {job.tasks_labeled} tasks")
        break
    elif job.status == "failed":
        print(f"\\nFailed: {job.error}")
        break

    time.sleep(10)

# 4. Check agent executions
print("\\nChecking agent executions...")
executions = client.agents.list_executions(agent.uid, limit=10)
print(f"Agent executed {len(list(executions))} times")
"""
CHECK_EXECUTIONS = COMPLETE_EXAMPLE[COMPLETE_EXAMPLE.index("# 4. Check agent executions") :]


# ---------------------------------------------------------------------------------------------------- helpers
class Receiver:
    """A webhook receiver on 127.0.0.1 (a real HTTP server on a thread) that keeps every request and answers
    ``status`` (a list: one per request in turn, the last repeated)."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses or (200,))
        self.requests: list[dict] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status = receiver.statuses[min(len(receiver.requests), len(receiver.statuses)) - 1]
                answer = json.dumps({"received": status < 300}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def signed_by(request: dict, secret: str) -> bool:
    expected = hmac.new(secret.encode(), request["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, request["headers"]["X-Avala-Webhook-Signature"])


def closed_port_url() -> str:
    """The URL of a port on 127.0.0.1 that nothing listens on (a receiver that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/down"


class _FastTime(types.ModuleType):
    """``time`` for the examples: ``sleep(10)`` waits 0.2 s."""

    def __init__(self) -> None:
        super().__init__("time")
        self.__dict__.update({k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
        self.sleep = lambda seconds: time.sleep(min(seconds, 0.2))


def run_docs(code: str, ids: dict[str, str], namespace: dict | None = None) -> dict:
    """Run the docs' ``code`` with ``ids`` (and URLs) substituted; ``from avala import Avala`` gives the local
    client and ``time.sleep`` is shortened. Returns the namespace it ran in."""
    for placeholder, real in ids.items():
        code = code.replace(placeholder, real)
    code = textwrap.dedent(code).replace("from avala import Avala", "pass").replace("import time", "pass")
    namespace = namespace if namespace is not None else {}
    namespace.setdefault("__builtins__", __builtins__)
    exec(compile(code, "<docs>", "exec"), {**namespace, "Avala": Avala, "time": _FastTime()}, namespace)  # noqa: S102
    return namespace


def text_project(client: Avala, texts: int = 3, models: dict | None = None):
    project = client.projects.create(
        "docs", data_type="text", models=models or {"text_classification": "sentiment-minilm-sst2"}
    )
    client.projects.import_items(project.uid, [Text(f"text number {n}") for n in range(texts)])
    return project, [t.uid for t in client.tasks.list(project=project.uid)]


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("AVALA_INFER_HOME", str(home))  # where the docs' Avala(api_key=...) keeps its store
    return home


@pytest.fixture
def client(home):
    with Avala(home=home, worker=False) as client:
        yield client


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


# ---------------------------------------------------------------------------------------------------- the docs
def test_docs_agent_examples_run(client, receiver, capsys):
    project, tasks = text_project(client)
    ids = {"https://api.example.com": receiver.url, "proj_abc123": project.uid}
    created = run_docs(CREATE, ids)
    try:
        agent = created["agent"]
        assert capsys.readouterr().out == f"Agent created: {agent.uid}\n"
        assert agent.uid.startswith("agent_") and agent.events == ["task.completed"] and agent.is_active
        assert agent.callback_url == f"{receiver.url}/webhooks/quality-check" and len(agent.secret) == 64

        filtered = run_docs(FILTERS, ids, {"client": client})["agent"]
        assert filtered.project == project.uid and filtered.task_types == ["image_classification", "object_detection"]

        result = run_docs(TEST, ids, {"client": client, "agent": agent})["result"]
        assert result["success"] is True and result["status_code"] == 200 and result["latency_ms"] > 0
        assert capsys.readouterr().out.startswith("Test result: {'success': True")
        (request,) = receiver.requests
        assert request["path"] == "/webhooks/quality-check" and signed_by(request, agent.secret)
        assert request["headers"]["X-Avala-Webhook-Event"] == "agent.test"

        run_docs(LIST, ids, {"client": client})
        assert capsys.readouterr().out == "Quality Check Agent - Active: True\nProject-Specific Agent - Active: True\n"

        ids["agent_xyz789"] = agent.uid
        run_docs(GET, ids, {"client": client})
        assert capsys.readouterr().out == (
            "Name: Quality Check Agent\nEvents: ['task.completed']\n"
            f"Callback URL: {receiver.url}/webhooks/quality-check\nActive: True\n"
        )

        # a task completed while the agent listens, delivered by the dispatcher: an execution to list
        client.tasks.complete(tasks[0])
        deliver_all(client)
        run_docs(EXECUTIONS, ids, {"client": client})
        out = capsys.readouterr().out.splitlines()
        assert out[1::3] == ["Status: succeeded", "Status: succeeded"]
        assert out[2::3] == ["Event: agent.test", "Event: task.completed"]
        assert out[0].startswith("Executed at: 20") and "Failed execution" not in "".join(out)
        delivered = receiver.requests[1]
        assert delivered["headers"]["X-Avala-Webhook-Event"] == "task.completed" and signed_by(delivered, agent.secret)
        assert json.loads(delivered["body"])["task"] == tasks[0]

        updated = run_docs(UPDATE, ids, {"client": client})["agent"]
        assert capsys.readouterr().out == f"Agent updated: {agent.uid}\n"
        assert updated.is_active is False and updated.description == "Updated description"
        assert updated.events == ["task.completed", "task.rejected"] and updated.callback_url.endswith("/new-webhook")
        assert updated.secret is None  # shown by create only

        client.tasks.complete(tasks[1])  # an inactive agent is told nothing
        assert client.agents.get(agent.uid).execution_stats["pending_deliveries"] == 0

        # a receiver that is down: the docs' pagination example prints the failure
        client.agents.update(agent.uid, is_active=True, callback_url=closed_port_url())
        assert client.agents.test(agent.uid, timeout=2)["success"] is False
        run_docs(EXECUTIONS, ids, {"client": client})
        out = capsys.readouterr().out
        assert "Status: failed" in out and "Failed execution: connection refused by http://127.0.0.1:" in out

        run_docs(DELETE, ids, {"client": client})
        assert capsys.readouterr().out == "Agent deleted\n"
        with pytest.raises(NotFoundError, match="agents list"):
            client.agents.get(agent.uid)
        assert [a.uid for a in client.agents.list()] == [filtered.uid]
    finally:
        created["client"].close()


def deliver_all(client: Avala) -> None:
    """Send every due delivery now, as the dispatcher process does, and return when none is left."""
    from avala_infer.agents.dispatcher import Dispatcher

    Dispatcher(client.home, lease_s=5.0, timeout_s=2.0, poll_s=0.05, backoff_base_s=0.05).run(until_idle=True)


def coco_names_with_pedestrians() -> list[str]:
    """YOLO11n's 80 COCO labels, ``person`` called ``pedestrian`` (as the docs' example asks for)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(need(ASSETS / "models" / "yolo11n.onnx")))
    names = ast.literal_eval(session.get_modelmeta().custom_metadata_map["names"])
    return ["pedestrian" if name == "person" else name for _, name in sorted(names.items())]


def test_docs_complete_example_runs(home, tmp_path, receiver, capsys):
    """The docs' Complete Example: an agent on a project's task.completed, an auto-label job (YOLO11n whose
    ``person`` is named ``pedestrian`` by its spec), its progress, the agent's executions. Then a person completes
    a task: the agent is sent a signed POST; a pull agent answers the job's results."""
    folder = tmp_path / "images"
    folder.mkdir()
    for image in sorted(need(VAL_IMAGES).glob("*.jpg"))[:4]:
        shutil.copy(image, folder / image.name)
    spec = tmp_path / "streets-yolo.yaml"
    spec.write_text(
        "name: streets-yolo\nmodel_type: object_detection\nbackend: onnxruntime\nweights: yolo11n.onnx\n"
        f"input_size: 320\nbatch_size: 4\nlabels: {json.dumps(coco_names_with_pedestrians())}\n",
        encoding="utf-8",
    )
    with Avala(home=home, worker=False) as setup:
        project = setup.projects.create("streets", models={"object_detection": str(spec)})
        assert setup.projects.import_items(project.uid, [folder]).created == 4
        puller = setup.agents.create(
            name="results reviewer", events=["result.submitted", "result.accepted", "result.rejected"]
        )

    ids = {"https://api.example.com": receiver.url, "proj_abc123": project.uid}
    ns = run_docs(COMPLETE_EXAMPLE, ids)
    client = ns["client"]
    try:
        out = capsys.readouterr().out
        agent, job = ns["agent"], ns["job"]
        assert f"Agent created: {agent.uid}\n" in out and f"Job UID: {job.uid}\n" in out
        assert "Status: completed - Progress: 100.0%\n" in out and "\nCompleted! Labeled 4 tasks\n" in out
        assert out.endswith("Checking agent executions...\nAgent executed 0 times\n")  # no task completed yet
        assert sorted(job.summary["labels"]) == ["car", "pedestrian", "truck"]

        # a person completes a task: the agent (task.completed on this project) is sent a signed POST
        task = client.tasks.list(project=project.uid).items[0]
        client.tasks.complete(task.uid)
        deliver_all(client)
        (request,) = receiver.requests
        assert request["path"] == "/review" and signed_by(request, agent.secret)
        body = json.loads(request["body"])
        assert body["event"] == "task.completed" and body["task"] == task.uid and body["project"] == project.uid
        run_docs(CHECK_EXECUTIONS, ids, {"client": client, "agent": agent})
        assert capsys.readouterr().out == "\nChecking agent executions...\nAgent executed 1 times\n"

        # the pull agent was told of each result the job submitted; it approves one, so its task is reviewed
        submitted = client.agents.lease_executions(puller.uid, limit=10)
        assert [e.event_type for e in submitted] == ["result.submitted"] * 4
        assert {e.task for e in submitted} == {t.uid for t in client.tasks.list(project=project.uid)}
        first = submitted[0]
        assert first.result == client.tasks.results(first.task)[0]["uid"]
        assert first.event_payload["data"]["job"] == job.uid
        client.agents.respond(first.uid, action="approve", reason="boxes look right")
        assert client.tasks.get(first.task).status == "reviewed"
        for execution in submitted[1:]:
            client.agents.respond(execution.uid, action="skip")

        # people accept one result and reject another: the pull agent is told of both
        accepted, rejected = (client.tasks.results(e.task)[0]["uid"] for e in submitted[1:3])
        assert client.results.accept(accepted) == {"uid": accepted, "accepted": True}
        client.results.reject(rejected, reason="missed a car")
        assert client.tasks.results(submitted[1].task)[0]["is_draft"] == 0
        assert client.tasks.results(submitted[2].task) == []
        told = client.agents.lease_executions(puller.uid)
        assert [(e.event_type, e.result) for e in told] == [
            ("result.accepted", accepted),
            ("result.rejected", rejected),
        ]
        assert told[1].event_payload["data"]["reason"] == "missed a car"
        stats = client.agents.get(puller.uid).execution_stats
        assert stats == {"total": 4, "succeeded": 4, "pending_deliveries": 2}
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------------- CRUD
def test_crud_pages_validation_and_the_secret_shown_once(client, receiver):
    project, _ = text_project(client, texts=1)
    made = [
        client.agents.create(name=f"agent {n}", events=["task.completed"], callback_url=f"{receiver.url}/{n}")
        for n in range(3)
    ]
    assert all(isinstance(a, Agent) and len(a.secret) == 64 for a in made) and len({a.secret for a in made}) == 3
    first = client.agents.list(limit=2)
    assert [a.uid for a in first] == [a.uid for a in made[:2]] and first.has_more
    second = client.agents.list(limit=2, cursor=first.next_cursor)
    assert [a.uid for a in second] == [made[2].uid] and second.next_cursor is None
    assert all(a.secret is None for a in [*first, *second]) and client.agents.get(made[0].uid).secret is None
    assert client.agents.get(made[0].uid).execution_stats == {"total": 0, "pending_deliveries": 0}

    given = client.agents.create(name="given secret", callback_url=receiver.url, secret="s3cret")
    assert given.secret == "s3cret" and given.events == [] and given.is_active and given.pull_mode is False
    assert client.agents.test(given.uid)["success"] and signed_by(receiver.requests[-1], "s3cret")

    changed = client.agents.update(
        made[1].uid, name="renamed", events=["task.rejected", "result.accepted"], project=project.uid,
        task_types=["text_classification"], callback_url="",
    )  # fmt: skip
    assert (changed.name, changed.events, changed.project) == ("renamed", ["task.rejected", "result.accepted"],
                                                               project.uid)  # fmt: skip
    assert changed.task_types == ["text_classification"] and changed.pull_mode and changed.callback_url is None
    assert client.agents.update(made[1].uid).name == "renamed"  # nothing given: nothing changes

    with pytest.raises(ConfigError, match=r"unknown event type\(s\) \['task.exploded'\].*task.created"):
        client.agents.create(name="x", events=["task.completed", "task.exploded"])
    with pytest.raises(UnsafeURLError, match="only http:// and https:// URLs are allowed"):
        client.agents.create(name="x", callback_url="ftp://example.com/hook")
    with pytest.raises(NotFoundError, match="no project 'proj_nope'"):
        client.agents.create(name="x", project="proj_nope")
    with pytest.raises(ConfigError, match="unknown model type 'lidar'"):
        client.agents.create(name="x", task_types=["object_detection", "lidar"])
    with pytest.raises(ConfigError, match="needs a name"):
        client.agents.create(name=" ")
    with pytest.raises(ConfigError, match="unknown event"):
        client.agents.update(made[0].uid, events=["nope"])
    with pytest.raises(ConfigError, match="limit must be between 1 and 1000"):
        client.agents.list(limit=0)
    with pytest.raises(NotFoundError, match="no agent 'agent_nope'"):
        client.agents.update("agent_nope", name="x")
    with pytest.raises(NotFoundError):
        client.agents.list_executions("agent_nope")
    assert len(client.agents.list()) == 4  # nothing invalid was created

    client.agents.delete(made[0].uid)
    with pytest.raises(NotFoundError):
        client.agents.delete(made[0].uid)
    assert [a.uid for a in client.agents.list()] == [made[1].uid, made[2].uid, given.uid]


def test_agent_test_reports_failures_and_records_each(client, receiver):
    failing = Receiver(500)
    try:
        agent = client.agents.create(name="flaky", events=["task.completed"], callback_url=failing.url + "/hook")
        result = client.agents.test(agent.uid)
        assert result["success"] is False and result["status_code"] == 500 and "HTTP 500" in result["message"]
        assert failing.requests[0]["headers"]["X-Avala-Webhook-Event"] == "agent.test"
    finally:
        failing.close()
    client.agents.update(agent.uid, callback_url=closed_port_url())
    down = client.agents.test(agent.uid, timeout=2)
    assert down["success"] is False and down["status_code"] is None and "connection refused" in down["message"]
    client.agents.update(agent.uid, callback_url=receiver.url)
    assert client.agents.test(agent.uid)["success"] is True
    executions = list(client.agents.list_executions(agent.uid))
    assert all(isinstance(e, AgentExecution) and e.event == "agent.test" for e in executions)
    assert [e.status for e in executions] == ["failed", "failed", "succeeded"]
    assert executions[0].response_status == 500 and executions[0].error.startswith("HTTP 500")
    assert executions[2].error is None and executions[2].response_excerpt == '{"received": true}'
    assert client.agents.get(agent.uid).execution_stats == {
        "total": 3, "failed": 2, "succeeded": 1, "pending_deliveries": 0
    }  # fmt: skip
    pull = client.agents.create(name="puller", events=["task.completed"])
    assert client.agents.test(pull.uid)["success"] is False  # nothing to POST to: it pulls
    with pytest.raises(NotFoundError):
        client.agents.test("agent_nope")


# ---------------------------------------------------------------------------------------------------- pull mode
def test_pull_mode_leases_expire_and_answers_change_tasks(client):
    project, tasks = text_project(client)
    agent = client.agents.create(
        name="reviewer", events=["task.completed", "task.reviewed", "task.rejected"], project=project.uid
    )
    assert agent.pull_mode and client.agents.lease_executions(agent.uid) == []
    client.tasks.complete(tasks[0])
    client.tasks.complete(tasks[1])
    assert client.agents.get(agent.uid).execution_stats["pending_deliveries"] == 2

    (mine,) = client.agents.lease_executions(agent.uid, limit=1, lease_seconds=1.0)
    assert (mine.status, mine.event_type, mine.task, mine.attempts) == ("running", "task.completed", tasks[0], 1)
    assert mine.registration == agent.uid and mine.event_payload["data"]["status"] == "completed"
    (theirs,) = client.agents.lease_executions(agent.uid, limit=5, lease_seconds=30, holder="consumer-b")
    assert theirs.task == tasks[1]  # a leased execution is nobody else's
    assert client.agents.lease_executions(agent.uid, holder="consumer-c") == []

    time.sleep(1.1)  # my lease expires: I may no longer answer, and it is pending again for anyone
    with pytest.raises(ConfigError, match="not leased by .*expired"):
        client.agents.respond(mine.uid, action="approve")
    assert client.tasks.get(tasks[0]).status == "completed"
    (again,) = client.agents.lease_executions(agent.uid, holder="consumer-c", lease_seconds=30)
    assert again.uid == mine.uid and again.attempts == 2
    with pytest.raises(ConfigError, match="not leased by consumer-b"):
        client.agents.respond(again.uid, action="reject", holder="consumer-b")  # a wrong holder
    with pytest.raises(ConfigError, match="action must be one of approve, reject, flag, skip"):
        client.agents.respond(again.uid, action="delete", holder="consumer-c")
    with pytest.raises(NotFoundError):
        client.agents.respond("no-such-execution", action="skip")

    approved = client.agents.respond(again.uid, action="approve", reason="fine", holder="consumer-c")
    assert (approved.action, approved.reason, approved.status, approved.task) == ("approve", "fine", "succeeded",
                                                                                  tasks[0])  # fmt: skip
    assert approved.delivery == mine.uid and approved.error is None
    assert client.tasks.get(tasks[0]).status == "reviewed"
    client.agents.respond(theirs.uid, action="reject", reason="wrong label", holder="consumer-b")
    assert client.tasks.get(tasks[1]).status == "rejected"
    with pytest.raises(ConfigError):  # answered once only
        client.agents.respond(theirs.uid, action="approve", holder="consumer-b")

    # approve and reject caused task.reviewed and task.rejected, which this agent listens to: flag and skip
    # complete those without touching the tasks
    caused = client.agents.lease_executions(agent.uid)
    assert [(e.event_type, e.task) for e in caused] == [("task.reviewed", tasks[0]), ("task.rejected", tasks[1])]
    assert caused[1].event_payload["data"]["reason"] == "wrong label"
    client.agents.respond(caused[0].uid, action="flag", reason="look again")
    client.agents.respond(caused[1].uid, action="skip")
    assert [client.tasks.get(t).status for t in tasks] == ["reviewed", "rejected", "pending"]
    executions = list(client.agents.list_executions(agent.uid, limit=3))
    assert [(e.event, e.action) for e in executions] == [("task.completed", "approve"), ("task.completed", "reject"),
                                                         ("task.reviewed", "flag")]  # fmt: skip
    assert client.agents.list_executions(agent.uid, limit=3).next_cursor is not None
    assert client.agents.get(agent.uid).execution_stats == {"total": 4, "succeeded": 4, "pending_deliveries": 0}

    push = client.agents.create(name="pusher", events=["task.completed"], callback_url="http://127.0.0.1:9/x")
    with pytest.raises(ConfigError, match="only agents without one pull"):
        client.agents.lease_executions(push.uid)
    with pytest.raises(ConfigError, match="lease_seconds must be positive"):
        client.agents.lease_executions(agent.uid, lease_seconds=0)


def test_human_side_events_reach_only_matching_agents(client):
    project, tasks = text_project(client)
    other, _ = text_project(client, texts=1, models={"named_entity_recognition": "ner-minilm-conll03"})
    everything = client.agents.create(name="all", events=["task.completed", "task.reviewed", "task.rejected"])
    this_project = client.agents.create(name="proj", events=["task.rejected"], project=project.uid)
    other_project = client.agents.create(name="other", events=["task.completed"], project=other.uid)
    detection_only = client.agents.create(name="det", events=["task.completed"], task_types=["object_detection"])
    text_only = client.agents.create(name="text", events=["task.completed"], task_types=["text_classification"])
    inactive = client.agents.create(name="off", events=["task.completed"], is_active=False)

    done = client.tasks.complete(tasks[0])
    assert done.status == "completed" and done.uid == tasks[0]
    assert client.tasks.review(tasks[1], reason="ok").status == "reviewed"
    assert client.tasks.reject(tasks[2], reason="blurry").status == "rejected"
    assert [t.status for t in client.tasks.list(project=project.uid, status="rejected")] == ["rejected"]

    def told(agent) -> list[tuple[str, str | None, str | None]]:
        leased = client.agents.lease_executions(agent.uid, limit=100)
        return [(e.event_type, e.task, e.event_payload["data"]["reason"]) for e in leased]

    assert told(everything) == [("task.completed", tasks[0], None), ("task.reviewed", tasks[1], "ok"),
                                ("task.rejected", tasks[2], "blurry")]  # fmt: skip
    assert told(this_project) == [("task.rejected", tasks[2], "blurry")]
    assert told(text_only) == [("task.completed", tasks[0], None)]
    assert told(other_project) == told(detection_only) == told(inactive) == []
    with pytest.raises(NotFoundError, match="no task 'task_nope'"):
        client.tasks.complete("task_nope")
    with pytest.raises(NotFoundError, match="no result 'res_nope'"):
        client.results.accept("res_nope")
