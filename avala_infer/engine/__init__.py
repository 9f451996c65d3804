"""The pipeline that turns sources into predictions; no database, no HTTP."""

from avala_infer.engine.pipeline import Engine, PredictOptions

__all__ = ["Engine", "PredictOptions"]
