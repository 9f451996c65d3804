"""What a registry coverage case is: a spec to load, inputs to run, and a check of each prediction.

Each model family keeps its cases in its own ``tests/coverage_<family>.py`` as ``COVERAGE``: a dict from
(model type, backend) to a function ``make(tmp_dir) -> Case``. A case uses real weights from the shared
assets where they exist, else a tiny randomly initialised model it builds and saves under ``tmp_dir``.
``tests/test_registry_coverage.py`` merges them and fails for a registered pair that has none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avala_infer.annotations import Prediction
from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType


@dataclasses.dataclass
class Case:
    spec: ModelSpec
    sources: list[Any]  # paths, or avala_infer.Text strings
    check: Callable[[Prediction], None]  # asserts one prediction is right for its type
    predict_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


CaseFactory = Callable[[Path], Case]
Coverage = dict[tuple[ModelType, str], CaseFactory]
