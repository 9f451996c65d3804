"""Registry coverage: text classification and NER, on transformers and onnxruntime.

Real weights from the shared assets where they exist (the SST-2 sentiment model, the CoNLL-2003 NER model and
its ONNX export); a tiny random BERT exported to ONNX for text classification, which has no ONNX asset. The
helpers that build and export tiny models are shared with tests/test_text_classification.py and test_ner.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avala_infer.annotations import Classifications, Entities
from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType, Text
from tests.conftest import ASSETS, IN_CI, need
from tests.coverage_base import Case, Coverage

SENTIMENT = ASSETS / "models" / "sentiment-minilm-sst2"
NER = ASSETS / "models" / "ner-minilm-conll03"
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def need_onnx() -> None:
    """Exporting to ONNX needs the ``onnx`` package (a test dependency): skip without it, fail under CI."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        message = "exporting a model to ONNX needs the onnx package: pip install onnx"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def tiny_text_model(folder: Path, task: str, labels: list[str], problem_type: str | None = None, seed: int = 0) -> Path:
    """A randomly initialised 2-layer BERT for ``task`` (``sequence`` or ``token``) with the sentiment model's
    tokenizer, saved to ``folder``; reproducible for a given ``seed``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertForTokenClassification

    tokenizer = AutoTokenizer.from_pretrained(str(need(SENTIMENT)), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        problem_type=problem_type,
    )
    torch.manual_seed(seed)
    model_class = BertForSequenceClassification if task == "sequence" else BertForTokenClassification
    model = model_class(config).eval()
    with torch.no_grad():  # random heads give near-uniform scores; widen them so classes differ
        head = model.classifier
        head.weight.mul_(40.0)
        head.bias.uniform_(-1.0, 1.0)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def export_onnx(model_folder: Path, onnx_path: Path, task: str, inputs: tuple[str, ...] = ONNX_INPUTS) -> Path:
    """``torch.onnx.export`` of a transformers folder with eager attention (SDPA traces wrong padded batches),
    dynamic batch and length, graph inputs ``inputs`` (default input_ids, attention_mask, token_type_ids),
    output ``logits``."""
    need_onnx()
    import warnings

    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    auto = AutoModelForSequenceClassification if task == "sequence" else AutoModelForTokenClassification
    model = auto.from_pretrained(str(model_folder), local_files_only=True, attn_implementation="eager").eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 2023, 102, 0, 0, 0]])
    example = {"input_ids": ids, "attention_mask": (ids > 0).long(), "token_type_ids": torch.zeros_like(ids)}
    axes = {name: {0: "batch", 1: "tokens"} for name in inputs}
    axes["logits"] = {0: "batch"} if task == "sequence" else {0: "batch", 1: "tokens"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (),
            str(onnx_path),
            kwargs={name: example[name] for name in inputs},
            input_names=list(inputs),
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return onnx_path


def _check_sentiment(prediction) -> None:
    result = prediction.result
    assert isinstance(result, Classifications) and not result.multi_label
    assert set(result.class_name) == {"negative", "positive"}  # top_k=None keeps both
    expected = "positive" if "great" in prediction.text else "negative"
    assert result.class_name[0] == expected and result.confidence[0] > 0.9
    assert abs(float(result.confidence.sum()) - 1.0) < 1e-5


def _sentiment_case(tmp_dir: Path) -> Case:
    spec = ModelSpec(
        name="test-sentiment",
        model_type=ModelType.TEXT_CLASSIFICATION,
        backend="transformers",
        weights=str(need(SENTIMENT)),
    )
    texts = [Text("a great, moving film"), Text("a dull and tedious mess")]
    return Case(spec, texts, _check_sentiment, {"top_k": None, "confidence_threshold": 0.0})


def _onnx_classification_case(tmp_dir: Path) -> Case:
    labels = ["sports", "politics", "science"]
    folder = tiny_text_model(tmp_dir / "tiny-cls", "sequence", labels)
    onnx_path = export_onnx(folder, folder / "model.onnx", "sequence")
    spec = ModelSpec(
        name="test-tiny-cls-onnx",
        model_type=ModelType.TEXT_CLASSIFICATION,
        backend="onnxruntime",
        weights=str(onnx_path),
    )

    def check(prediction) -> None:
        result = prediction.result
        assert isinstance(result, Classifications) and sorted(result.class_name) == sorted(labels)
        assert np.all(np.diff(result.confidence) <= 0) and abs(float(result.confidence.sum()) - 1.0) < 1e-5

    texts = [Text("the match ended in a draw"), Text("a long text " * 200)]  # the second is truncated
    return Case(spec, texts, check, {"top_k": None, "confidence_threshold": 0.0})


def _check_entities(prediction) -> None:
    result = prediction.result
    assert isinstance(result, Entities)
    found = {(span, name) for span, name in zip(result.spans(prediction.text), result.class_name)}
    assert ("Peter Blackburn", "PER") in found
    assert ("Brussels", "LOC") in found
    assert set(result.class_name) <= {"PER", "LOC"}


def _ner_case(backend: str):
    def make(tmp_dir: Path) -> Case:
        weights = need(NER / "model.onnx") if backend == "onnxruntime" else need(NER)
        spec = ModelSpec(
            name=f"test-ner-{backend}",
            model_type=ModelType.NAMED_ENTITY_RECOGNITION,
            backend=backend,
            weights=str(weights),
        )
        texts = [Text("Peter Blackburn flew to Brussels on Monday ."), Text("Brussels welcomed Peter Blackburn .")]
        return Case(spec, texts, _check_entities, {"labels": ["PER", "LOC"]})

    return make


COVERAGE: Coverage = {
    (ModelType.TEXT_CLASSIFICATION, "transformers"): _sentiment_case,
    (ModelType.TEXT_CLASSIFICATION, "onnxruntime"): _onnx_classification_case,
    (ModelType.NAMED_ENTITY_RECOGNITION, "transformers"): _ner_case("transformers"),
    (ModelType.NAMED_ENTITY_RECOGNITION, "onnxruntime"): _ner_case("onnxruntime"),
}
