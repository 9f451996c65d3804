"""Predictors, grouped by model family; each is imported lazily through :mod:`avala_infer.registry`.

- :mod:`.detection`: YOLO boxes and instance masks (ultralytics checkpoints, ONNX exports).
- :mod:`.segmentation`: semantic segmentation, a class per pixel (torchvision, transformers, ONNX).
- :mod:`.classification`: image classification (ultralytics, torchvision, transformers, ONNX).
- :mod:`.text`: text classification and named-entity recognition (transformers, ONNX).

Family-neutral pieces sit at this level: :mod:`.base` (the predictor contract, device resolution),
:mod:`.imaging` (ImageNet statistics, letterboxing), :mod:`.scoring` (softmax and sigmoid),
:mod:`.onnx_session`, :mod:`.transformers_loading` and :mod:`.ultralytics_loading`. A family imports these and its
own modules, never another family's.
"""
