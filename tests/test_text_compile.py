"""``torch_compile`` for transformers text models: a compiled model runs fixed shapes only (``batch_size`` rows
of a length bucket's width), so a run compiles once per length bucket, not once per batch shape, and gives the
eager model's results.

The compiles are counted with a torch.compile backend of the test's own (dynamo traces and guards on shapes as it
does for inductor, then runs the traced graph as it is): what decides how often a run compiles is dynamo's
shape guards, which this exercises; inductor's code generation (tens of seconds a shape on this CPU) adds
nothing to that and is left to ``benchmarks/bench_text.py --torch-compile``.
"""

from __future__ import annotations

import numpy as np
import pytest

from avala_infer import Engine
from avala_infer.predictors.text import transformers as text_transformers
from avala_infer.predictors.text.batching import length_bucket
from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType
from tests.coverage_text import tiny_text_model
from tests.test_text_classification import read_sst2

BATCH = 4


@pytest.fixture
def counted_compiles(monkeypatch):
    """The (rows, width) of the token inputs of every graph torch.compile compiles while the test runs."""
    import torch

    shapes: list[tuple[int, int]] = []

    def counting_backend(graph, example_inputs):
        tokens = [tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor) and t.dtype == torch.int64]
        shapes.append(tokens[0])
        return graph.forward

    def compile_counted(module, mode):
        return torch.compile(module, backend=counting_backend, dynamic=False) if mode else module

    monkeypatch.setattr(text_transformers, "compile_module", compile_counted)
    return shapes


def _spec(folder, model_type: ModelType, compiled: bool) -> ModelSpec:
    return ModelSpec(
        name=f"tiny-{model_type.value}",
        model_type=model_type,
        backend="transformers",
        weights=str(folder),
        batch_size=BATCH,
        torch_compile="default" if compiled else None,
    )


def _texts() -> list[str]:
    """SST-2 sentences of many lengths (rows of several length buckets), in an order that leaves short batches."""
    texts, _ = read_sst2(45)
    return texts


def _batch_shapes(engine: Engine, texts: list[str]) -> set[tuple[int, int]]:
    """The (rows, width) shapes the eager engine's batches have: what an uncompiled run would compile for."""
    seen = set()
    forward = engine.predictor.forward

    def recording(batch):
        seen.add(tuple(batch.input_ids.shape))
        return forward(batch)

    engine.predictor.forward = recording
    try:
        list(engine.predict_texts(texts, top_k=None, confidence_threshold=0.0))
    finally:
        engine.predictor.forward = forward
    return seen


def test_a_compiled_text_classifier_compiles_once_per_length_bucket_and_scores_as_eager(tmp_path, counted_compiles):
    folder = tiny_text_model(tmp_path / "tiny-sst", "sequence", ["negative", "neutral", "positive"], seed=3)
    texts = _texts()
    with Engine(_spec(folder, ModelType.TEXT_CLASSIFICATION, compiled=False), device="cpu") as eager:
        shapes = _batch_shapes(eager, texts)
        expected = list(eager.predict_texts(texts, top_k=None, confidence_threshold=0.0))
    with Engine(_spec(folder, ModelType.TEXT_CLASSIFICATION, compiled=True), device="cpu") as compiled:
        got = list(compiled.predict_texts(texts, top_k=None, confidence_threshold=0.0))
    buckets = {length_bucket(width) for _, width in shapes}
    assert len(shapes) > len(buckets) >= 2  # eager batches of several shapes within a bucket, and several buckets
    assert sorted(set(counted_compiles)) == sorted((BATCH, bucket) for bucket in buckets)
    assert len(counted_compiles) == len(buckets)  # once each
    assert [p.source for p in got] == [p.source for p in expected]
    for ours, theirs in zip(got, expected, strict=True):
        scores = dict(zip(ours.result.class_name, ours.result.confidence))
        reference = dict(zip(theirs.result.class_name, theirs.result.confidence))
        assert scores.keys() == reference.keys()
        assert np.allclose([scores[k] for k in reference], list(reference.values()), atol=1e-5), ours.source
        assert ours.result.class_name[0] == theirs.result.class_name[0]


def test_a_compiled_ner_model_finds_the_eager_entities(tmp_path, counted_compiles):
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    folder = tiny_text_model(tmp_path / "tiny-ner", "token", tags, seed=4)
    texts = _texts()
    with Engine(_spec(folder, ModelType.NAMED_ENTITY_RECOGNITION, compiled=False), device="cpu") as eager:
        expected = list(eager.predict_texts(texts, confidence_threshold=0.0))
    with Engine(_spec(folder, ModelType.NAMED_ENTITY_RECOGNITION, compiled=True), device="cpu") as compiled:
        got = list(compiled.predict_texts(texts, confidence_threshold=0.0))
    assert counted_compiles and all(rows == BATCH for rows, _ in counted_compiles)
    assert sum(len(p.result) for p in expected) > 20
    for ours, theirs in zip(got, expected, strict=True):
        mine, reference = ours.result, theirs.result
        assert _spans(mine) == _spans(reference), ours.source
        assert np.allclose(mine.confidence, reference.confidence, atol=1e-5), ours.source


def _spans(entities) -> list[tuple[int, int, str]]:
    return [(int(s), int(e), str(n)) for s, e, n in zip(entities.start, entities.end, entities.class_name)]
