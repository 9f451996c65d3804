"""Image classification: every class's score per image.

:mod:`.preprocess` holds what backends share (input sizes, ultralytics' resize and centre crop); backends:
:mod:`.ultralytics`, :mod:`.torchvision`, :mod:`.transformers` and :mod:`.onnx` (onnxruntime).
"""
