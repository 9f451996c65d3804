"""What every writer shares: the sink protocol and small helpers for atomic, streaming files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

from avala_infer.annotations import Prediction


class Sink(Protocol):
    """Consumes predictions one at a time; ``close`` finishes the files and returns their paths."""

    def write(self, prediction: Prediction) -> None: ...

    def close(self) -> list[Path]: ...


def round_list(values, digits: int = 2) -> list[float]:
    return [round(float(v), digits) for v in values]


def write_json_atomic(path: Path, data: object) -> Path:
    """Write JSON to ``path`` through a temporary file, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path


class FailureLog:
    """``failures.jsonl``: one line per failed item (source, key, reason); created only when one fails."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / "failures.jsonl"
        self.count = 0
        self._file = None

    def write(self, prediction: Prediction) -> None:
        if prediction.ok:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8")
        record = {
            "index": prediction.index,
            "source": prediction.source,
            "key": prediction.key,
            "error": prediction.error,
        }
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.count += 1

    def close(self) -> list[Path]:
        if self._file is None:
            if self.path.exists():  # a stale list from an earlier run into the same folder
                self.path.unlink()
            return []
        self._file.close()
        return [self.path]
