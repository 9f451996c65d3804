"""Issue 14, point 4: where a Ray job's items live. The actor class runs here without a cluster (it is a plain
class Ray instantiates in its worker processes): a local path is read as it is, a ``file://`` URI is fetched
through pyarrow.fs and predicts exactly as its path does, and a URI no installed reader opens fails its item
alone with a reason that says what to install."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from avala_infer.engine import Engine
from avala_infer.jobs.executors.ray import EngineActor
from avala_infer.jobs.executors.uris import MissingReader, is_uri, read_uri
from tests.conftest import ASSETS, VAL_IMAGES, need
from tests.jobs_helpers import write_spec

pytestmark = [pytest.mark.assets]


def test_uris_are_told_from_paths():
    assert is_uri("s3://bucket/a.jpg") and is_uri("gs://b/c.png") and is_uri("file:///tmp/a.jpg")
    assert not is_uri("/data/a.jpg") and not is_uri("C://data/a.jpg") and not is_uri("relative/a.jpg")
    assert not is_uri(None) and not is_uri("")


def test_a_uri_without_a_reader_says_what_to_install():
    with pytest.raises(MissingReader, match=r"no reader for nosuch:// URIs .*install one on every worker"):
        read_uri("nosuch://bucket/image.jpg")


def test_an_actor_reads_paths_and_uris_alike(tmp_path):
    need(ASSETS / "models" / "yolo11n.onnx")
    images = sorted(need(VAL_IMAGES).glob("*.jpg"))[:2]
    spec = write_spec(tmp_path / "specs", name="uri-yolo")
    with Engine(spec, device="cpu") as engine:
        options = engine.predict_options(confidence_threshold=0.25)
    actor = EngineActor(str(spec), "cpu", options, {"num_cpus": 1})
    sources = [str(images[0]), images[1].as_uri(), "nosuch://bucket/x.jpg", images[0].as_uri()]
    batch = {
        "seq": np.arange(len(sources), dtype=np.int64),
        "source": np.asarray(sources, dtype=object),
        "key": np.asarray([f"k{n}" for n in range(len(sources))], dtype=object),
        "text": np.asarray([None] * len(sources), dtype=object),
    }
    out = actor(batch)
    predictions = {int(seq): pickle.loads(blob) for seq, blob in zip(out["seq"], out["prediction"])}
    assert sorted(predictions) == [0, 1, 2, 3]
    local, fetched, missing, same = (predictions[n] for n in range(4))
    assert local.ok and fetched.ok and same.ok
    assert len(local.detections) > 0
    assert fetched.source == sources[1] and same.source == sources[3]  # the URI, not the scratch copy
    np.testing.assert_allclose(same.detections.xyxy, local.detections.xyxy, atol=1e-4)
    np.testing.assert_array_equal(same.detections.class_id, local.detections.class_id)
    assert not missing.ok and "no reader for nosuch://" in missing.error
    assert not list(actor.scratch.path.iterdir()), "fetched copies are deleted after each call"
