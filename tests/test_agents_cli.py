"""The agents, tasks and results commands as a user runs them: real subprocesses on a real store (``--home``),
a real HTTP receiver on 127.0.0.1 for ``agents test``, exit codes and JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from avala_infer import Avala
from avala_infer.store import Store
from avala_infer.types import Text
from tests.test_agents_client import Receiver, closed_port_url, signed_by


def _run(home, *args, input=None):
    command = [sys.executable, "-m", "avala_infer.cli", *map(str, args), "--home", str(home)]
    return subprocess.run(command, input=input, capture_output=True, text=True, timeout=120, env={**os.environ})


def _json(home, *args, input=None):
    result = _run(home, *args, "--json", input=input)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def project(tmp_path):
    """A text project of three tasks: (home, project uid, task uids)."""
    home = tmp_path / "home"
    with Avala(home=home, worker=False) as client:
        project = client.projects.create(
            "notes", data_type="text", models={"text_classification": "sentiment-minilm-sst2"}
        )
        client.projects.import_items(project.uid, [Text("one"), Text("two"), Text("three")])
        tasks = [t.uid for t in client.tasks.list(project=project.uid)]
    return home, project.uid, tasks


def _record_results(home, project_uid: str, tasks: list[str]) -> list[str]:
    """Results for ``tasks`` written as a worker writes a job's (claim, record a batch, finish); their uids."""
    store = Store(home)
    try:
        job = store.jobs.create(project_uid, model_type="text_classification")
        job = store.jobs.claim("test-worker", 60.0, only=job["uid"])
        outcomes = [{"task_uid": t, "outcome": "succeeded", "annotations": [{"label": "POSITIVE", "score": 0.9}],
                     "label_counts": {"POSITIVE": 1}} for t in tasks]  # fmt: skip
        store.jobs.record_batch(job, "test-worker", outcomes, 60.0)
        store.jobs.finish(job, "test-worker", "completed")
        return [store.results.for_task(t)[0]["uid"] for t in tasks]
    finally:
        store.close()


def test_agents_create_list_get_update_test_executions_delete(project):
    home, project_uid, _ = project
    receiver = Receiver()
    try:
        created = _run(home, "agents", "create", "checker", "-e", "task.completed", "--event", "task.rejected",
                       "--callback-url", receiver.url + "/hook", "--project", project_uid,
                       "--task-type", "text_classification", "--description", "checks", "--json")  # fmt: skip
        assert created.returncode == 0, created.stderr
        agent = json.loads(created.stdout)
        assert agent["uid"].startswith("agent_") and len(agent["secret"]) == 64 and "shown only now" in created.stderr
        assert agent["events"] == ["task.completed", "task.rejected"] and agent["project"] == project_uid
        assert agent["task_types"] == ["text_classification"] and agent["is_active"] is True
        human = _run(home, "agents", "create", "puller", "--inactive", "--secret-stdin", input="s3cret\n")
        assert human.returncode == 0 and "secret:                s3cret" in human.stdout
        assert (
            "callback_url:          none (pull mode" in human.stdout and "is_active:             False" in human.stdout
        )

        shown = _json(home, "agents", "get", agent["uid"])
        assert shown["secret"] is None and shown["execution_stats"] == {"total": 0, "pending_deliveries": 0}
        listed = _run(home, "agents", "list", "--limit", "1")
        assert listed.returncode == 0 and agent["uid"] in listed.stdout and "push" in listed.stdout
        assert "more: --cursor" in listed.stderr
        page = _json(home, "agents", "list", "--cursor", listed.stderr.split("--cursor ")[1].strip())
        assert [a["name"] for a in page["items"]] == ["puller"] and page["next_cursor"] is None

        tested = _run(home, "agents", "test", agent["uid"])
        assert tested.returncode == 0 and "success:               True" in tested.stdout
        assert "status_code:           200" in tested.stdout
        (request,) = receiver.requests
        assert signed_by(request, agent["secret"]) and request["headers"]["X-Avala-Webhook-Event"] == "agent.test"

        updated = _json(home, "agents", "update", agent["uid"], "--callback-url", closed_port_url(), "--name", "c2")
        assert updated["name"] == "c2" and updated["events"] == agent["events"]  # the rest unchanged
        down = _run(home, "agents", "test", agent["uid"], "--timeout", "2", "--json")
        assert down.returncode == 1 and json.loads(down.stdout)["success"] is False
        executions = _json(home, "agents", "executions", agent["uid"])
        assert [(e["event_type"], e["status"]) for e in executions["items"]] == [("agent.test", "succeeded"),
                                                                                 ("agent.test", "failed")]  # fmt: skip
        assert "connection refused" in executions["items"][1]["error_message"]
        table = _run(home, "agents", "executions", agent["uid"])
        assert "HTTP 200" in table.stdout and "connection refused" in table.stdout

        pulled = _json(home, "agents", "update", agent["uid"], "--callback-url", "", "--inactive",
                       "--event", "task.created")  # fmt: skip
        assert pulled["callback_url"] is None and pulled["is_active"] is False and pulled["events"] == ["task.created"]

        bad = _run(home, "agents", "create", "x", "--event", "task.exploded")
        assert bad.returncode == 1 and bad.stderr.startswith("error: unknown event type(s) ['task.exploded']")
        bad_url = _run(home, "agents", "create", "x", "--callback-url", "example.com/hook")
        assert bad_url.returncode == 1 and "only http:// and https:// URLs are allowed" in bad_url.stderr

        deleted = _run(home, "agents", "delete", agent["uid"])
        assert deleted.returncode == 0 and deleted.stdout == f"agent {agent['uid']} deleted\n"
        gone = _run(home, "agents", "get", agent["uid"])
        assert gone.returncode == 1 and gone.stderr.startswith(f"error: no agent '{agent['uid']}'")
    finally:
        receiver.close()


def test_tasks_results_and_pull_mode_on_the_command_line(project):
    home, project_uid, tasks = project
    agent = _json(home, "agents", "create", "reviewer", "-e", "task.completed", "-e", "task.rejected",
                  "-e", "result.accepted", "-e", "result.rejected")  # fmt: skip

    completed = _run(home, "tasks", "complete", tasks[0])
    assert completed.returncode == 0 and completed.stdout == f"task {tasks[0]} completed\n"
    rejected = _json(home, "tasks", "reject", tasks[1], "--reason", "blurry")
    assert rejected["status"] == "rejected" and rejected["uid"] == tasks[1]
    assert _run(home, "tasks", "review", "task_nope").returncode == 1

    accepted_uid, rejected_uid = _record_results(home, project_uid, tasks[1:])
    listed = _json(home, "results", "list", tasks[1])
    assert [r["uid"] for r in listed] == [accepted_uid] and listed[0]["is_draft"] == 1
    assert _run(home, "results", "accept", accepted_uid).stdout == f"result {accepted_uid} accepted\n"
    assert _json(home, "results", "reject", rejected_uid, "--reason", "wrong")["accepted"] is False
    assert _json(home, "results", "list", tasks[2]) == []

    leased = _json(home, "agents", "pull", agent["uid"], "--limit", "3", "--lease", "60")
    assert [(e["event_type"], e["task"], e["status"]) for e in leased] == [
        ("task.completed", tasks[0], "running"),
        ("task.rejected", tasks[1], "running"),
        ("result.accepted", tasks[1], "running"),
    ]
    rest = _run(home, "agents", "pull", agent["uid"])  # the fourth; the three leased are nobody else's
    assert rest.returncode == 0 and "result.rejected" in rest.stdout and "1 leased by cli:" in rest.stderr

    approved = _run(home, "agents", "answer", leased[0]["uid"], "--action", "approve", "--reason", "good")
    assert approved.returncode == 0 and approved.stdout == f"execution {leased[0]['uid']}: approve (task {tasks[0]})\n"
    assert [t["uid"] for t in _json(home, "tasks", "list", project_uid, "--status", "reviewed")["items"]] == [tasks[0]]
    not_mine = _run(home, "agents", "answer", leased[1]["uid"], "--action", "skip", "--holder", "someone-else")
    assert not_mine.returncode == 1 and "is not leased by someone-else" in not_mine.stderr
    flagged = _json(home, "agents", "answer", leased[1]["uid"], "--action", "flag", "--reason", "look")
    assert (flagged["action"], flagged["reason"], flagged["status"]) == ("flag", "look", "succeeded")
    assert _run(home, "agents", "answer", leased[2]["uid"], "--action", "maybe").returncode == 2

    executions = _json(home, "agents", "executions", agent["uid"])["items"]
    assert [(e["event_type"], e["action"]) for e in executions] == [("task.completed", "approve"),
                                                                    ("task.rejected", "flag")]  # fmt: skip
    push = _json(home, "agents", "create", "pusher", "--callback-url", "http://127.0.0.1:9/x")
    refused = _run(home, "agents", "pull", push["uid"])
    assert refused.returncode == 1 and "only agents without one pull" in refused.stderr


def test_secrets_come_from_a_file_or_stdin_never_from_argv(project, tmp_path):
    """Issue 9, item 2: ``--secret VALUE`` (visible to every user in ps) is refused with a message naming the two
    replacements; ``--secret-file`` and ``--secret-stdin`` set the secret (create and update) that the receiver
    verifies the signature with."""
    home, _, _ = project
    receiver = Receiver()
    try:
        old = _run(home, "agents", "create", "old-script", "--callback-url", receiver.url, "--secret", "s3cret")
        assert old.returncode == 2, old.stderr
        assert "--secret is no longer accepted" in old.stderr
        assert "--secret-file PATH" in old.stderr and "--secret-stdin" in old.stderr
        assert _json(home, "agents", "list")["items"] == []  # nothing was created
        assert "--secret " not in _run(home, "agents", "create", "--help").stdout  # hidden: not offered any more

        secret_file = tmp_path / "secret.txt"
        secret_file.write_text("from-a-file-4f1c\n")
        from_file = _json(home, "agents", "create", "filed", "--callback-url", receiver.url,
                          "--secret-file", secret_file)  # fmt: skip
        assert from_file["secret"] == "from-a-file-4f1c"
        from_stdin = _json(home, "agents", "create", "piped", "--callback-url", receiver.url, "--secret-stdin",
                           input="from-stdin-9a2e\n")  # fmt: skip
        assert from_stdin["secret"] == "from-stdin-9a2e"
        for agent in (from_file, from_stdin):
            assert _run(home, "agents", "test", agent["uid"]).returncode == 0
        first, second = receiver.requests
        assert signed_by(first, "from-a-file-4f1c") and signed_by(second, "from-stdin-9a2e")
        assert not signed_by(first, "from-stdin-9a2e")

        rotated = _run(home, "agents", "update", from_file["uid"], "--secret-stdin", input="rotated-77\n")
        assert rotated.returncode == 0, rotated.stderr
        assert _run(home, "agents", "test", from_file["uid"]).returncode == 0
        assert signed_by(receiver.requests[2], "rotated-77")
        refused = _run(home, "agents", "update", from_file["uid"], "--secret", "x")
        assert refused.returncode == 2 and "--secret-file PATH" in refused.stderr

        both = _run(home, "agents", "create", "x", "--secret-file", secret_file, "--secret-stdin", input="y")
        assert both.returncode == 2 and "not both" in both.stderr
        empty = _run(home, "agents", "create", "x", "--secret-stdin", input="\n")
        assert empty.returncode == 2 and "is empty" in empty.stderr
    finally:
        receiver.close()
