"""A prompted (open-vocabulary) model through the HTTP API: the official Avala SDK (``avala==0.10.0``) creates an
auto-label job whose labels are neither the spec's nor COCO's names on a real ``avala_infer.server`` app (its
worker thread runs the job), and the job's results are what ``label()`` gives for the same vocabulary. The model
is a tiny random-weight OWL-ViT (tests/coverage_open_vocab.py); 3 coco128 val2017 images. No mocks."""

from __future__ import annotations

from collections import Counter

import pytest

pytest.importorskip("fastapi", reason="the server extra: pip install -e '.[server]'")
avala = pytest.importorskip("avala", reason="the official SDK is a test extra: pip install -e '.[test]'")
pytest.importorskip("transformers", reason="the transformers backend: pip install -e '.[transformers]'")

from avala_infer.server.app import create_app  # noqa: E402
from tests.coverage_open_vocab import owl_folder, owl_spec  # noqa: E402
from tests.jobs_helpers import Reader, make_project, val_images  # noqa: E402
from tests.server_helpers import KEY, Served, ThreadServer  # noqa: E402
from tests.test_server_jobs import raw, sdk_for, wait_done  # noqa: E402

N_IMAGES = 3
# "forklift" is in neither the spec's labels ([dog]) nor COCO's names, nor the tiny tokenizer's words: its k and l
# are unknown symbols there, and its prompt has more tokens than "person"'s (the processor pads them to one length)
LABELS = ["forklift", "person"]
THRESHOLD = 0.45  # on these 3 images: about 25 boxes of each label


@pytest.fixture(scope="module")
def prompted(tmp_path_factory):
    """A project whose object_detection model is a prompted OWL-ViT spec (labels: [dog]), served with a worker."""
    root = tmp_path_factory.mktemp("prompted")
    spec = owl_spec(root / "tiny-owl-http.yaml", owl_folder(root, "owlvit"), ["dog"], name="tiny-owl-http")
    images = val_images(N_IMAGES)
    home = root / "home"
    project = make_project(home, images, spec, name="forklifts")
    server = ThreadServer(create_app(home, [KEY], worker=True)).start()
    try:
        yield Served(home=home, port=server.port, project=project, images=images), spec
    finally:
        server.stop()


def test_a_prompted_models_job_created_with_the_sdk_labels_the_vocabulary_it_is_given(prompted, monkeypatch):
    from avala_infer import label

    served, spec = prompted
    sdk = sdk_for(served, monkeypatch)
    try:
        # a 4xx here (avala.errors.ValidationError...) is the server refusing labels a prompted model looks for
        created = sdk.auto_label_jobs.create(
            served.project, model_type="object_detection", labels=LABELS, confidence_threshold=THRESHOLD
        )
        assert (created.model_type, created.labels, created.confidence_threshold) == (
            "object_detection",
            LABELS,
            THRESHOLD,
        )
        job = wait_done(sdk, created.uid, timeout=120)
    finally:
        sdk.close()
    assert job.status == "completed", job.error_message
    assert job.total_items == job.successful_items == N_IMAGES and job.failed_items == 0
    body = raw(served, "GET", f"/auto-label-jobs/{created.uid}/").json()
    assert body["summary"] == job.summary and body["labels"] == LABELS

    expected = label(served.images, str(spec), out=served.home.parent / "same", labels=LABELS,
                     confidence_threshold=THRESHOLD, device="cpu").summary["per_label"]  # fmt: skip
    assert set(expected) == set(LABELS) and all(expected.values()), expected  # some boxes of each label
    assert job.summary["per_label"] == expected, "the job's per-label counts differ from label() on the same images"

    reader = Reader(served.home)
    try:
        results = reader.results(served.project)
    finally:
        reader.close()
    assert len(results) == N_IMAGES and {r["job_uid"] for r in results.values()} == {created.uid}
    stored = Counter(a["label"] for r in results.values() for a in r["annotations"]["annotations"])
    assert dict(stored) == expected, "the stored results name other labels, or other counts, than label()"
