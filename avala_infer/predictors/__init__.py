"""Predictors: one module per backend; imported lazily through :mod:`avala_infer.registry`."""
