"""Semantic segmentation: a class per pixel.

:mod:`.semantic` holds what every backend shares (scores up to the original size, class and score maps);
backends: :mod:`.torchvision`, :mod:`.transformers` and :mod:`.onnx` (onnxruntime). Instance segmentation
(YOLO-seg) is in :mod:`avala_infer.predictors.detection`.
"""
