"""Issue 12: inference providers over HTTP. The official Avala SDK (``avala==0.10.0``) and its ``avala`` CLI,
unmodified, manage providers on a real ``avala_infer.server`` app served by uvicorn on 127.0.0.1. A provider is a
model of this host: ``test`` loads it with the trust rules of a job (YOLO11n from the assets' model folder,
``AVALA_INFER_MODELS``) and predicts on one sample; a provider tied to a project makes that project's jobs use its
model. No mocks."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("fastapi", reason="the server extra: pip install -e '.[server]'")
avala = pytest.importorskip("avala", reason="the official SDK is a test extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx")

from avala_infer import Avala  # noqa: E402
from avala_infer.server.app import create_app  # noqa: E402
from tests.conftest import ASSETS, need  # noqa: E402
from tests.jobs_helpers import make_project, val_images, write_spec  # noqa: E402
from tests.server_helpers import KEY, Served, ThreadServer, avala_cli  # noqa: E402

N_IMAGES = 2


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("providers")
    images = val_images(N_IMAGES)
    home = root / "home"
    project = make_project(home, images, write_spec(root / "specs"), name="streets")
    server = ThreadServer(create_app(home, [KEY], device="cpu")).start()
    try:
        yield Served(home=home, port=server.port, project=project, images=images)
    finally:
        server.stop()


def raw(served, method: str, path: str, **kwargs) -> httpx.Response:
    headers = {"X-Avala-Api-Key": KEY}
    return httpx.request(method, served.base_url + path, headers=headers, follow_redirects=False, timeout=60, **kwargs)


def test_providers_crud_with_patch_and_delete(sdk, served):
    created = sdk.inference_providers.create(name="detector", provider_type="local", config={"model": "yolo11n"})
    assert created.uid.startswith("provider_") and created.is_active and created.project is None
    assert created.config == {"model": "yolo11n", "model_type": "object_detection"}  # the type from its spec
    assert created.last_test_at is None and created.last_test_success is None
    assert sdk.inference_providers.get(created.uid).name == "detector"
    assert created.uid in [p.uid for p in sdk.inference_providers.list().items]

    updated = sdk.inference_providers.update(created.uid, name="renamed", description="the coco one", is_active=False)
    assert (updated.name, updated.description, updated.is_active) == ("renamed", "the coco one", False)
    assert updated.config == created.config and updated.updated_at >= created.updated_at
    cleared = raw(served, "PATCH", f"/inference-providers/{created.uid}/", json={"description": None})
    assert cleared.status_code == 200 and cleared.json()["description"] is None

    other = sdk.inference_providers.create(name="other", provider_type="local", config={"model": "yolo11n"})
    first = sdk.inference_providers.list(limit=1)
    assert len(first.items) == 1 and first.has_more
    second = sdk.inference_providers.list(limit=1, cursor=first.next_cursor)
    assert second.items[0].uid != first.items[0].uid
    answer = raw(served, "DELETE", f"/inference-providers/{other.uid}/")
    assert answer.status_code == 204 and answer.content == b""
    assert sdk.inference_providers.delete(created.uid) is None
    with pytest.raises(avala.errors.NotFoundError, match=created.uid):
        sdk.inference_providers.get(created.uid)
    assert raw(served, "DELETE", f"/inference-providers/{created.uid}/").status_code == 404


def test_bad_providers_are_refused_with_a_string_detail(sdk, served):
    cases = [
        ({"name": "x", "provider_type": "sagemaker", "config": {"model": "yolo11n"}}, 400, "local"),
        ({"name": "x", "provider_type": "local", "config": {"url": "http://example"}}, 400, '"model"'),
        ({"name": "x", "provider_type": "local", "config": {"model": "no-such-model"}}, 400, "model_type"),
        ({"name": "x", "config": {"model": "yolo11n", "model_type": "named_entity_recognition"}}, 400, "object"),
        ({"name": "x", "config": {"model": "yolo11n"}, "project": "proj_nope"}, 404, "proj_nope"),
        ({"name": "x"}, 422, "config"),
        ({"name": "x", "config": {"model": "m" * 5000 + ".pt"}}, 400, "not a usable model"),
    ]
    for body, status, words in cases:
        answer = raw(served, "POST", "/inference-providers/", json=body)
        assert answer.status_code == status, (body, answer.text)
        detail = answer.json()["detail"]
        assert isinstance(detail, str) and words in detail, (body, detail)
    with pytest.raises(avala.errors.ValidationError, match="sagemaker"):
        sdk.inference_providers.create(name="x", provider_type="sagemaker", config={"model": "yolo11n"})


def test_testing_yolo11n_loads_it_and_predicts(sdk, served):
    need(ASSETS / "models" / "yolo11n.pt")
    provider = sdk.inference_providers.create(name="coco", provider_type="local", config={"model": "yolo11n"})
    result = sdk.inference_providers.test(provider.uid)
    assert result["success"] is True, result
    assert "yolo11n" in result["message"] and "ultralytics" in result["message"]
    assert result["sample"].startswith("a blank") and result["annotations"] == 0
    stored = sdk.inference_providers.get(provider.uid)
    assert stored.last_test_success is True and stored.last_test_at is not None
    assert raw(served, "GET", f"/inference-providers/{provider.uid}/").json()["last_test_message"] == result["message"]


def test_a_missing_model_file_fails_its_test_saying_where_to_put_it(sdk, served, tmp_path):
    provider = sdk.inference_providers.create(name="gone", provider_type="local", config={"model": "gone-model.pt"})
    assert provider.config["model_type"] == "object_detection"  # from the file name, as a weights path says
    result = sdk.inference_providers.test(provider.uid)
    assert result["success"] is False
    assert "not found" in result["message"] and "AVALA_INFER_MODELS" in result["message"]
    assert sdk.inference_providers.get(provider.uid).last_test_success is False

    spec = tmp_path / "absent.yaml"  # a spec whose weights are nowhere
    spec.write_text("name: absent\nmodel_type: object_detection\nbackend: onnxruntime\nweights: absent.onnx\n")
    provider = sdk.inference_providers.create(name="absent", provider_type="local", config={"model": str(spec)})
    result = sdk.inference_providers.test(provider.uid)
    assert result["success"] is False and "Put the file in" in result["message"], result


def test_an_untrusted_pickle_fails_its_test_clearly(sdk, served, tmp_path):
    copy = tmp_path / "copied-yolo11n.pt"  # outside every model folder: a pickle that is not trusted
    shutil.copyfile(need(ASSETS / "models" / "yolo11n.pt"), copy)
    provider = sdk.inference_providers.create(name="untrusted", provider_type="local", config={"model": str(copy)})
    result = sdk.inference_providers.test(provider.uid)
    assert result["success"] is False
    assert "refusing to load" in result["message"] and "avala-infer models add" in result["message"]


def test_a_provider_with_a_project_makes_its_jobs_use_the_model(sdk, served, tmp_path):
    model = str(write_spec(tmp_path / "specs", name="provider-yolo"))
    provider = sdk.inference_providers.create(
        name="for streets", provider_type="local", config={"model": model}, project=served.project
    )
    assert provider.project == served.project
    with Avala(home=served.home, worker=False) as local:
        assert local.projects.get(served.project).models["object_detection"] == model
    result = sdk.inference_providers.test(provider.uid)  # on the project's first item
    assert result["success"] is True and result["sample"].startswith("item ") and result["annotations"] > 0, result

    job = sdk.auto_label_jobs.create(served.project, model_type="object_detection")
    assert raw(served, "GET", f"/auto-label-jobs/{job.uid}/").json()["model"] == model
    with Avala(home=served.home, worker=False) as local:
        done = local.auto_label_jobs.wait(job.uid, timeout=120)
    assert done.status == "completed" and done.successful_items == N_IMAGES, done

    with pytest.raises(avala.errors.ValidationError, match="text"):  # a text model cannot serve an image project
        sdk.inference_providers.update(
            provider.uid, config={"model": "ner-minilm-conll03", "model_type": "named_entity_recognition"}
        )


def test_the_avala_cli_creates_and_tests_a_provider(served):
    need(ASSETS / "models" / "yolo11n.onnx")
    config = '{"model": "yolo11n.onnx"}'
    done = avala_cli(
        served, "inference-providers", "create", "--name", "cli", "--provider-type", "http", "--config", config
    )
    assert done.returncode == 0 and "Inference provider created:" in done.stdout, done.stderr
    uid = done.stdout.split("created:")[1].split()[0]
    done = avala_cli(served, "inference-providers", "test", uid)
    assert done.returncode == 0 and "Connection test passed." in done.stdout, (done.stdout, done.stderr)
    done = avala_cli(served, "-o", "json", "inference-providers", "get", uid)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)  # the CLI prints its detail rows as strings
    assert (shown["provider_type"], shown["last_test_success"]) == ("http", "True"), shown
