"""Loading transformers models quietly: what every transformers-backed predictor (of any family) shares."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from avala_infer.errors import ModelLoadError


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' per-weight progress bars off while a model loads (they would garble our own progress line),
    and back as they were after."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_folder(folder: Path, processor_class: Any, model_class: Any, model_what: str) -> tuple[Any, Any]:
    """``(processor, model)`` from a ``save_pretrained`` folder: ``processor_class.from_pretrained`` (an image
    processor, or a processor of image processor and tokenizer) and ``model_class.from_pretrained``, the model in
    eval mode on the CPU in fp32 (the predictor moves and casts it). Any failure is a :class:`ModelLoadError`
    naming the folder, what could not be loaded (``model_what``: "a SAM model") and how to fix it."""
    if not folder.is_dir():
        raise ModelLoadError(
            f"{folder} is not a folder: transformers weights are a folder saved with save_pretrained "
            "(config.json, the weights and the processor's files)"
        )
    try:
        processor = processor_class.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # OSError, ValueError, KeyError...: transformers raises many types
        raise ModelLoadError(
            f"cannot load a {processor_class.__name__} from {folder} ({exc}); save one there with "
            "processor.save_pretrained(folder)"
        ) from exc
    try:
        with quiet_loading():
            model = model_class.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot load {model_what} from {folder}: {exc}") from exc
    return processor, model.float().eval()
