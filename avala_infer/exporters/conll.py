"""CoNLL (IOB2) for named entities: ``annotations.conll``, one ``token TAG`` line per token, a blank line
after each item, items in input order (the order of ``annotations.jsonl``).

Tokens are the text's whitespace-separated pieces (give pre-tokenized, space-joined text to keep your own
tokens, as CoNLL-2003 is). A token overlapping an entity span is tagged with its type: ``B-`` on the first
token of the span, ``I-`` on the following ones; a token overlapping two spans takes the first; other tokens
are ``O``. Readers of CoNLL-2003 (seqeval, the datasets ``conll2003`` loader) read it as the NER column.
Written to ``annotations.conll.part`` and renamed at the end: a run that fails leaves no half file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from avala_infer.annotations import Entities, Prediction
from avala_infer.exporters.base import PartFile

_TOKEN = re.compile(r"\S+")


def iob_tags(text: str, entities: Entities) -> list[tuple[str, str]]:
    """(token, tag) for every whitespace token of ``text``."""
    order = np.argsort(entities.start, kind="stable")
    spans = [(int(entities.start[i]), int(entities.end[i]), str(entities.class_name[i])) for i in order]
    tagged = []
    previous_span = None
    k = 0
    for match in _TOKEN.finditer(text):
        start, end = match.span()
        while k < len(spans) and spans[k][1] <= start:
            k += 1  # spans that ended before this token
        tag, span = "O", None
        if k < len(spans) and spans[k][0] < end:
            span = k
            tag = ("I-" if previous_span == span else "B-") + spans[k][2]
        tagged.append((match.group(), tag))
        previous_span = span
    return tagged


class ConllWriter:
    def __init__(self, out_dir: Path, labels: tuple[str, ...]) -> None:
        self.path = out_dir / "annotations.conll"
        self._file = PartFile(self.path)

    def write(self, prediction: Prediction) -> None:
        if not prediction.ok or not isinstance(prediction.result, Entities):
            return
        lines = [f"{token} {tag}" for token, tag in iob_tags(prediction.text or "", prediction.result)]
        self._file.write("\n".join(lines) + "\n\n" if lines else "")

    def close(self) -> list[Path]:
        return self._file.finish()

    def abort(self) -> None:
        self._file.abort()
