"""Detection: YOLO boxes and, for ``-seg`` models, instance masks.

Instance segmentation lives here with detection: a YOLO-seg model is a detector whose head also gives mask
coefficients, so it shares the letterbox and the NMS (:mod:`.yolo`) and adds the masks (:mod:`.yolo_seg`).
Backends: :mod:`.ultralytics` (``.pt`` checkpoints) and :mod:`.onnx` (ONNX exports, run with onnxruntime).
"""
