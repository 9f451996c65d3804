"""Text classification: our scores equal transformers' text-classification pipeline on the same weights.

SST-2 dev (872 sentences) on the shared sentiment model: every class score within 1e-5 (the README's figure), the
same accuracy (0.8761, the README's);
sigmoid scores for a multi-label model; long texts truncated or scored as the mean of their windows; an ONNX
export of the same model scores as the torch model does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from avala_infer import Engine
from avala_infer.errors import ModelLoadError, ModelSpecError
from avala_infer.specs import ModelSpec, find_spec
from avala_infer.types import ModelType, Text
from tests.conftest import ASSETS, need
from tests.coverage_text import SENTIMENT, export_onnx, tiny_text_model

SST2 = ASSETS / "data" / "sst2" / "test.tsv"
LONG_PARTS = [
    "the first half of this film is a slow , muddled and tedious affair that goes nowhere",
    "the acting is wooden and the dialogue is flat",
    "but the last hour is a wonderful , moving and often hilarious triumph",
    "a great cast , a beautiful score and a brilliant ending make it a joy to watch",
]


TOL = 1e-5  # the README: scores equal the transformers pipelines "within 1e-5"


def max_diff(ours: np.ndarray, reference: np.ndarray, what: str) -> float:
    """The largest absolute score difference, printed so a run shows the measured figure."""
    worst = float(np.abs(np.asarray(ours) - np.asarray(reference)).max())
    print(f"{what}: scores within {worst:.2e}")
    return worst


def read_sst2(limit: int | None = None) -> tuple[list[str], np.ndarray]:
    lines = need(SST2).read_text(encoding="utf-8").splitlines()[1:]  # header: sentence<TAB>label
    rows = [line.rsplit("\t", 1) for line in lines if line.strip()][:limit]
    return [text for text, _ in rows], np.array([int(label) for _, label in rows])


def score_matrix(predictions, labels: tuple[str, ...]) -> np.ndarray:
    """(items, classes) scores in label order, from predictions made with top_k=None and threshold 0."""
    scores = np.full((len(predictions), len(labels)), np.nan, dtype=np.float64)
    for i, prediction in enumerate(predictions):
        assert prediction.ok, prediction.error
        scores[i, prediction.result.class_id] = prediction.result.confidence
    return scores


def pipeline_scores(pipe, texts: list[str], labels: tuple[str, ...], **kwargs) -> np.ndarray:
    results = pipe(texts, top_k=None, batch_size=8, **kwargs)
    return np.array([[{r["label"]: r["score"] for r in result}[name] for name in labels] for result in results])


def text_pipeline(folder: Path):
    from transformers import pipeline

    return pipeline("text-classification", model=str(folder), device="cpu")


def spec_for(weights: Path, backend: str = "transformers", **params) -> ModelSpec:
    return ModelSpec(
        name=f"test-{weights.name}",
        model_type=ModelType.TEXT_CLASSIFICATION,
        backend=backend,
        weights=str(weights),
        params=params,
    )


def predict_all(engine: Engine, texts: list[str]) -> list:
    return list(engine.predict_texts(texts, top_k=None, confidence_threshold=0.0))


@pytest.fixture(scope="module")
def sentiment_engine() -> Engine:
    need(SENTIMENT)
    return Engine("sentiment-minilm-sst2", device="cpu")


@pytest.mark.slow
def test_sst2_scores_and_accuracy_match_the_pipeline(sentiment_engine):
    texts, gold = read_sst2()
    assert len(texts) == 872
    labels = sentiment_engine.labels
    assert labels == ("negative", "positive")
    ours = score_matrix(predict_all(sentiment_engine, texts), labels)
    reference = pipeline_scores(text_pipeline(SENTIMENT), texts, labels)
    assert max_diff(ours, reference, "SST-2 vs pipeline") <= TOL
    np.testing.assert_allclose(ours.sum(1), 1.0, atol=1e-5)  # softmax over all classes
    ours_accuracy = float((ours.argmax(1) == gold).mean())
    assert ours_accuracy == float((reference.argmax(1) == gold).mean())
    print(f"SST-2 accuracy {ours_accuracy:.6f}")
    assert round(ours_accuracy, 4) == 0.8761  # the README's figure


def test_multi_label_model_gets_sigmoid_scores_as_the_pipeline(tmp_path):
    labels = ["action", "comedy", "drama", "horror"]
    folder = tiny_text_model(tmp_path / "multi", "sequence", labels, problem_type="multi_label_classification")
    texts, _ = read_sst2(limit=24)
    engine = Engine(spec_for(folder), device="cpu", batch_size=4)
    predictions = predict_all(engine, texts)
    assert all(p.result.multi_label for p in predictions)
    ours = score_matrix(predictions, engine.labels)
    pipe = text_pipeline(folder)
    reference = pipeline_scores(pipe, texts, engine.labels)
    assert max_diff(ours, reference, "multi-label sigmoid vs pipeline") <= TOL
    assert np.ptp(ours) > 0.5 and np.abs(ours.sum(1) - 1).max() > 0.1  # independent sigmoids, not a softmax

    # params.multi_label: false overrides the config: a softmax, as the pipeline's function_to_apply="softmax"
    engine = Engine(spec_for(folder, multi_label=False), device="cpu", batch_size=4)
    predictions = predict_all(engine, texts)
    assert not any(p.result.multi_label for p in predictions)
    softmaxed = pipeline_scores(pipe, texts, engine.labels, function_to_apply="softmax")
    assert max_diff(score_matrix(predictions, engine.labels), softmaxed, "multi_label: false vs pipeline") <= TOL


def test_single_logit_model_gets_a_sigmoid_as_in_the_pipeline(tmp_path):
    folder = tiny_text_model(tmp_path / "one", "sequence", ["toxic"], seed=3)
    texts, _ = read_sst2(limit=12)
    engine = Engine(spec_for(folder), device="cpu")
    predictions = predict_all(engine, texts)
    assert all(p.result.multi_label and len(p.result) == 1 for p in predictions)
    reference = pipeline_scores(text_pipeline(folder), texts, engine.labels)
    assert max_diff(score_matrix(predictions, engine.labels), reference, "single logit vs pipeline") <= TOL


def _window_scores(folder: Path, text: str, max_length: int, stride: int) -> np.ndarray:
    """Each window (the tokenizer's overflowing tokens) through the model alone, softmaxed: (windows, classes)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True).eval()
    windows = tokenizer(text, truncation=True, max_length=max_length, stride=stride, return_overflowing_tokens=True)
    scores = []
    with torch.inference_mode():
        for ids, types in zip(windows["input_ids"], windows["token_type_ids"]):
            logits = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types])).logits[0]
            scores.append(torch.softmax(logits.double(), -1).numpy())
    return np.array(scores)


def test_long_text_truncate_or_windows(sentiment_engine):
    text = " . ".join(LONG_PARTS) + " ."
    max_length, stride = 24, 6
    labels = sentiment_engine.labels
    base = find_spec("sentiment-minilm-sst2")
    assert base.params.get("long_text", "truncate") == "truncate"

    truncate_spec = dataclasses.replace(base, params={"max_length": max_length})
    truncated = score_matrix(predict_all(Engine(truncate_spec, device="cpu"), [text]), labels)[0]
    reference = pipeline_scores(text_pipeline(SENTIMENT), [text], labels, truncation=True, max_length=max_length)[0]
    assert max_diff(truncated, reference, "truncated vs pipeline") <= TOL

    windows_spec = dataclasses.replace(
        base, params={"max_length": max_length, "long_text": "windows", "stride": stride}
    )
    engine = Engine(windows_spec, device="cpu")
    per_window = _window_scores(SENTIMENT, text, max_length, stride)
    assert len(per_window) >= 4  # the text really is split
    assert len(engine.predictor.prepare(text).windows) == len(per_window)
    windowed = score_matrix(predict_all(engine, [text, LONG_PARTS[0]]), labels)
    assert max_diff(windowed[0], per_window.mean(0), "windows vs mean of windows") <= TOL
    # the first window speaks of the slow first half, the mean of all of them of the triumphant rest
    assert truncated.argmax() == 0 and windowed[0].argmax() == 1
    # a short text in the same batch as a long one scores as alone
    alone = score_matrix(predict_all(sentiment_engine, [LONG_PARTS[0]]), labels)[0]
    assert max_diff(windowed[1], alone, "short text batched with a long one vs alone") <= TOL


@pytest.mark.slow
def test_onnx_export_scores_as_the_torch_model(tmp_path, sentiment_engine):
    folder = tmp_path / "sentiment-onnx"
    folder.mkdir()
    onnx_path = export_onnx(SENTIMENT, folder / "model.onnx", "sequence")
    spec = spec_for(onnx_path, backend="onnxruntime", tokenizer=str(SENTIMENT))  # config.json from there too
    engine = Engine(spec, device="cpu")
    assert engine.labels == sentiment_engine.labels
    texts, gold = read_sst2(limit=300)
    ours = score_matrix(predict_all(engine, texts), engine.labels)
    torch_scores = score_matrix(predict_all(sentiment_engine, texts), engine.labels)
    assert max_diff(ours, torch_scores, "SST-2 ONNX vs torch") <= TOL
    assert (ours.argmax(1) == gold).mean() == (torch_scores.argmax(1) == gold).mean()


def test_onnx_graph_gets_only_the_inputs_it_declares(tmp_path):
    folder = tiny_text_model(tmp_path / "tiny", "sequence", ["a", "b", "c"], seed=5)
    onnx_path = export_onnx(folder, folder / "model.onnx", "sequence", inputs=("input_ids", "attention_mask"))
    engine = Engine(spec_for(onnx_path, backend="onnxruntime"), device="cpu", batch_size=4)
    assert sorted(engine.predictor.feeds) == ["attention_mask", "input_ids"]
    texts, _ = read_sst2(limit=16)
    reference = Engine(spec_for(folder), device="cpu", batch_size=4)
    ours = score_matrix(predict_all(engine, texts), engine.labels)
    torch_scores = score_matrix(predict_all(reference, texts), engine.labels)
    assert max_diff(ours, torch_scores, "tiny ONNX vs torch") <= TOL


def test_filters_and_top_k_through_the_engine(sentiment_engine):
    texts = ["a great , moving film", "a dull and tedious mess"]
    top = list(sentiment_engine.predict_texts(texts, top_k=1))
    assert [list(p.result.class_name) for p in top] == [["positive"], ["negative"]]
    only = list(sentiment_engine.predict_texts(texts, labels=["positive"], confidence_threshold=0.5))
    assert [list(p.result.class_name) for p in only] == [["positive"], []]
    sources = [Text(t) for t in texts]
    assert [p.result.class_name[0] for p in sentiment_engine.predict(sources)] == ["positive", "negative"]


def test_bad_specs_and_weights_fail_clearly(tmp_path):
    with pytest.raises(ModelSpecError, match="unknown params"):
        Engine(spec_for(need(SENTIMENT), long_txt="windows"), device="cpu")
    with pytest.raises(ModelSpecError, match="long_text"):
        Engine(spec_for(SENTIMENT, long_text="split"), device="cpu")
    with pytest.raises(ModelSpecError, match="stride"):
        Engine(spec_for(SENTIMENT, long_text="windows", max_length=16, stride=14), device="cpu")
    ner_folder = need(ASSETS / "models" / "ner-minilm-conll03")
    with pytest.raises(ModelLoadError, match="not a sequence classification model"):
        Engine(spec_for(ner_folder), device="cpu")
    with pytest.raises(ModelLoadError, match="is a file"):
        Engine(spec_for(ner_folder / "config.json"), device="cpu")
