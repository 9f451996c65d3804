"""Text models: text classification and named-entity recognition (token classification).

:mod:`.batching` (tokenizing, windows, rows), :mod:`.tasks` (the two tasks over any backend) and
:mod:`.ner_aggregation` (token scores into entity spans) are shared; backends: :mod:`.transformers` and
:mod:`.onnx` (onnxruntime). Importing this package imports no torch or transformers.
"""
