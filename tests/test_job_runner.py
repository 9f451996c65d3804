"""The job runner in this process over a real store: the engines it keeps (least recently used out), NER jobs'
``aggregation``, and JSON booleans in the job events that agents are sent."""

from __future__ import annotations

import gc
import json
import weakref

import pytest

from avala_infer.agents import Dispatcher
from avala_infer.errors import ConfigError
from avala_infer.jobs import JobRunner
from avala_infer.projects.imports import import_sources
from avala_infer.store import Store, worker_id
from avala_infer.types import Text
from tests.conftest import ASSETS, need
from tests.webhook_receivers import Receiver

pytestmark = [pytest.mark.assets]

NER = "named_entity_recognition"
CLS = "text_classification"
# the uncased MiniLM NER model tags "nad" B-PER and "##im" I-PER: "simple" groups sub-tokens by their own tags and
# cuts the name in two, "first" tags each word by its first sub-token and keeps it whole
TEXT = "Nadim Ladki won the race in Paris ."
SENTIMENT = ["negative", "positive"]  # a project's ontology is its first job's labels: a second model names its own


@pytest.fixture
def store(tmp_path):
    need(ASSETS / "models" / "ner-minilm-conll03")
    need(ASSETS / "models" / "sentiment-minilm-sst2")
    with Store(tmp_path / "home") as store:
        yield store


def text_project(store: Store, models: dict[str, str], name: str = "texts") -> str:
    project = store.projects.create(name, data_type="text", models=models)["uid"]
    assert import_sources(store, project, [Text(TEXT)]).created == 1
    return project


def run(store: Store, runner: JobRunner, job_uid: str) -> dict:
    job = store.jobs.claim(runner.worker, runner.lease_s, only=job_uid)
    finished = runner.run(job)
    assert finished is not None and finished["status"] == "completed", finished
    return finished


def test_runner_keeps_only_the_engine_of_the_latest_model(store):
    """Default: one engine kept; running a job of another model closes and drops the one before, which is then
    freed (no reference left to it)."""
    project = text_project(store, {NER: "ner-minilm-conll03", CLS: "sentiment-minilm-sst2"})
    with JobRunner(store, worker_id(), device="cpu") as runner:
        run(store, runner, store.jobs.create(project, model_type=NER)["uid"])
        assert list(runner.engines) == ["ner-minilm-conll03"]
        first = weakref.ref(runner.engines["ner-minilm-conll03"])
        run(store, runner, store.jobs.create(project, model_type=CLS, labels=SENTIMENT)["uid"])
        assert list(runner.engines) == ["sentiment-minilm-sst2"]
        gc.collect()
        assert first() is None, gc.get_referrers(first())
    assert runner.engines == {}  # closing the runner closes what it kept


def test_runner_with_room_for_two_drops_the_least_recently_used(store):
    project = text_project(store, {NER: "ner-minilm-conll03", CLS: "sentiment-minilm-sst2"})
    onnx = text_project(store, {NER: "ner-minilm-conll03-onnx"}, name="onnx")
    with pytest.raises(ConfigError, match="max_engines must be at least 1"):
        JobRunner(store, worker_id(), max_engines=0)
    with JobRunner(store, worker_id(), device="cpu", max_engines=2) as runner:
        run(store, runner, store.jobs.create(project, model_type=NER)["uid"])
        run(store, runner, store.jobs.create(project, model_type=CLS, labels=SENTIMENT)["uid"])
        assert list(runner.engines) == ["ner-minilm-conll03", "sentiment-minilm-sst2"]
        run(store, runner, store.jobs.create(project, model_type=NER)["uid"])  # used again: the newest now
        assert list(runner.engines) == ["sentiment-minilm-sst2", "ner-minilm-conll03"]
        run(store, runner, store.jobs.create(onnx, model_type=NER)["uid"])
        assert list(runner.engines) == ["ner-minilm-conll03", "ner-minilm-conll03-onnx"]


def test_ner_job_aggregation_simple_cuts_a_name_that_first_keeps_whole(store):
    words = {}
    with JobRunner(store, worker_id(), device="cpu") as runner:
        for aggregation in ("simple", "first", None):
            project = text_project(store, {NER: "ner-minilm-conll03"}, name=f"ner {aggregation}")
            job = store.jobs.create(project, model_type=NER, aggregation=aggregation)
            assert job["aggregation"] == aggregation
            run(store, runner, job["uid"])
            (task,) = store.items.list_tasks(project=project)[0]
            (result,) = store.results.for_task(task["uid"])
            entities = result["annotations"]["annotations"]
            words[aggregation] = [(TEXT[e["start"] : e["end"]], e["label"]) for e in entities]
    assert words["simple"] == [("Nad", "PER"), ("im Ladki", "PER"), ("Paris", "LOC")]
    assert words["first"] == [("Nadim Ladki", "PER"), ("Paris", "LOC")]
    assert words[None] == words["first"]  # the default


def test_aggregation_is_refused_for_other_model_types_and_unknown_names(store):
    project = text_project(store, {NER: "ner-minilm-conll03", CLS: "sentiment-minilm-sst2"})
    with pytest.raises(ConfigError, match="aggregation applies to named_entity_recognition jobs only"):
        store.jobs.create(project, model_type=CLS, aggregation="first")
    with pytest.raises(ConfigError, match="aggregation must be one of none, simple, first, average, max, got 'word'"):
        store.jobs.create(project, model_type=NER, aggregation="word")
    assert store.jobs.create(project, model_type=NER, aggregation=" Max ")["aggregation"] == "max"


def test_job_events_carry_json_booleans_in_the_store_and_the_delivered_body(store):
    """``dry_run`` is stored as 0/1; the auto_label.completed payload (stored, then sent as it is) has true JSON
    booleans. Failed before: ``"dry_run": 0``."""
    project = text_project(store, {CLS: "sentiment-minilm-sst2"})
    with Receiver() as receiver:
        store.agents.create(name="jobs", events=["auto_label.completed"], callback_url=receiver.url)
        for dry_run in (False, True):
            job = store.jobs.create(project, model_type=CLS, dry_run=dry_run)
            store.jobs.claim("test-worker", 60, only=job["uid"])
            store.jobs.finish(job, "test-worker", "completed")
        stored = [
            json.loads(row[0])["data"]["job"]
            for row in store.conn.execute("SELECT payload FROM events WHERE type = 'auto_label.completed' ORDER BY id")
        ]
        assert [job["dry_run"] for job in stored] == [False, True]
        assert stored[0]["dry_run"] is False and stored[1]["dry_run"] is True
        Dispatcher(store.home, poll_s=0.02, timeout_s=5.0).run(until_idle=True)
        bodies = [received.body for received in receiver.seen()]
    assert len(bodies) == 2 and all(b'"dry_run": false' in b or b'"dry_run": true' in b for b in bodies)
    assert sorted(json.loads(b)["data"]["job"]["dry_run"] for b in bodies) == [False, True]
