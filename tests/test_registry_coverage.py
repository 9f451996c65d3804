"""Every registered (model type, backend) pair runs through the engine; a new pair without coverage fails here."""

from __future__ import annotations

import pytest

from avala_infer.registry import registered
from tests import (
    coverage_box_prompted,
    coverage_classification,
    coverage_detection,
    coverage_open_vocab,
    coverage_semantic,
    coverage_text,
)

COVERAGE = {
    **coverage_detection.COVERAGE,
    **coverage_semantic.COVERAGE,
    **coverage_classification.COVERAGE,
    **coverage_text.COVERAGE,
    **coverage_open_vocab.COVERAGE,
    **coverage_box_prompted.COVERAGE,
}


def test_every_registered_pair_is_covered():
    missing = sorted(f"{t.value}/{b}" for t, b in set(registered()) - set(COVERAGE))
    assert not missing, f"registered without a test model: {missing}; add them to tests/coverage_<family>.py"


@pytest.mark.parametrize("pair", sorted(COVERAGE, key=lambda k: (k[0].value, k[1])), ids=lambda k: f"{k[0]}-{k[1]}")
def test_pair_runs_through_the_engine(pair, tmp_path):
    from avala_infer import Engine

    model_type, backend = pair
    case = COVERAGE[pair](tmp_path)
    engine = Engine(case.spec, device="cpu", batch_size=2, trust_weights=True)  # some cases build their .pt/.pth
    assert type(engine.predictor).backend == backend and engine.model_type is model_type
    predictions = list(engine.predict(case.sources, **case.predict_kwargs))
    assert len(predictions) == len(case.sources)
    assert [p.error for p in predictions] == [None] * len(case.sources)
    for prediction in predictions:
        case.check(prediction)
