"""JSONL: one object per labeled item, written as it arrives.

Each line is the item's record, :func:`avala_infer.exporters.records.prediction_to_record`, as ``json.dumps``
prints it (``prediction_to_json`` gives that text with the masks' runs printed by numpy; the module defines the
format: ``source``, ``key``, ``annotations``, and ``width``/``height`` or ``text``; boxes in pixels,
masks as uncompressed COCO RLE, classes best first, entity spans with character offsets).

Failed items are not here; they are in ``failures.jsonl``. The lines go to ``annotations.jsonl.part`` as they
arrive, renamed at the end: a run that fails leaves no half file (and an earlier run's file untouched).
"""

from __future__ import annotations

from pathlib import Path

from avala_infer.annotations import Prediction
from avala_infer.exporters.base import PartFile
from avala_infer.exporters.records import prediction_to_json


class JsonlWriter:
    """Writes ``annotations.jsonl``: one record per successful prediction."""

    def __init__(self, out_dir: Path, labels: tuple[str, ...]) -> None:
        self.path = out_dir / "annotations.jsonl"
        self._file = PartFile(self.path)

    def write(self, prediction: Prediction) -> None:
        if prediction.ok:
            self._file.write(prediction_to_json(prediction) + "\n")

    def close(self) -> list[Path]:
        return self._file.finish()

    def abort(self) -> None:
        self._file.abort()
