"""Registry coverage: semantic models (filled in as their predictors land)."""

from __future__ import annotations

from tests.coverage_base import Coverage

COVERAGE: Coverage = {}
