"""Issue 14, point 4: where a Ray job's items live. The actor class runs here without a cluster (it is a plain
class Ray instantiates in its worker processes): a local path is read as it is, a ``file://`` URI is fetched
through pyarrow.fs and predicts exactly as its path does, ``s3://`` URIs are fetched from a real S3 API (moto's
server on 127.0.0.1, the objects uploaded with boto3) and predict as their files do, and a URI no installed
reader opens, or an object that is not there, fails its item alone with the reason."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """An actor of the YOLO11n ONNX export on one CPU, as a Ray job builds it."""
    need(ASSETS / "models" / "yolo11n.onnx")
    spec = write_spec(tmp_path_factory.mktemp("specs"), name="uri-yolo")
    with Engine(spec, device="cpu") as engine:
        options = engine.predict_options(confidence_threshold=0.25)
    actor = EngineActor(str(spec), "cpu", options, {"num_cpus": 1})
    yield actor
    actor.engine.close()


def predict(actor: EngineActor, sources: list[str]) -> list:
    """``sources`` through the actor as one page; its predictions in order."""
    predictions = actor.predict([(n, source, f"k{n}", None) for n, source in enumerate(sources)])
    assert sorted(p.index for p in predictions) == list(range(len(sources)))
    assert not list(actor.scratch.path.iterdir()), "fetched copies are deleted after each page"
    return sorted(predictions, key=lambda p: p.index)


def assert_same_detections(ours, theirs) -> None:
    assert ours.ok and theirs.ok and len(theirs.detections) > 0
    np.testing.assert_allclose(ours.detections.xyxy, theirs.detections.xyxy, atol=1e-4)
    np.testing.assert_array_equal(ours.detections.class_id, theirs.detections.class_id)


def test_an_actor_reads_paths_and_uris_alike(detector):
    images = sorted(need(VAL_IMAGES).glob("*.jpg"))[:2]
    sources = [str(images[0]), images[1].as_uri(), "nosuch://bucket/x.jpg", images[0].as_uri()]
    local, fetched, missing, same = predict(detector, sources)
    assert local.ok and fetched.ok
    assert fetched.source == sources[1] and same.source == sources[3]  # the URI, not the scratch copy
    assert_same_detections(same, local)
    assert not missing.ok and "no reader for nosuch://" in missing.error


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 (a real S3 API over HTTP), and the environment that points the readers'
    S3 clients at it (pyarrow.fs reads AWS_ENDPOINT_URL, as boto3 does)."""
    server_module = pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    boto3 = pytest.importorskip("boto3")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        try:
            yield boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        finally:
            server.stop()


def test_an_actor_reads_s3_uris_from_an_s3_api(detector, s3):
    images = sorted(need(VAL_IMAGES).glob("*.jpg"))[:2]
    s3.create_bucket(Bucket="items")
    for path in images:
        s3.upload_file(str(path), "items", f"coco/{path.name}")
    sources = [f"s3://items/coco/{images[0].name}", f"s3://items/coco/{images[1].name}", "s3://items/coco/none.jpg"]
    first, second, absent = predict(detector, sources)
    local_first, local_second = predict(detector, [str(path) for path in images])
    assert first.source == sources[0] and second.source == sources[1]
    assert_same_detections(first, local_first)
    assert_same_detections(second, local_second)
    assert not absent.ok and absent.error.startswith(f"cannot read {sources[2]}: ")
    assert "none.jpg" in absent.error  # the object's own reason (not found), not a missing reader
