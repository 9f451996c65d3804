"""A prediction: one input item, its annotations, its timings, or the reason it failed."""

from __future__ import annotations

import dataclasses

from avala_infer.annotations.detections import Detections


@dataclasses.dataclass
class Prediction:
    """The result for one item, yielded in input order.

    ``source`` is the item's path (or ``"<array N>"`` for in-memory images), ``key`` its path relative to
    the folder it was found in (used to name output files). ``timings`` holds milliseconds per stage
    (read, decode, preprocess, forward, postprocess, filter); batch stages are shared evenly among the
    batch's items. A failed item has ``error`` set and empty detections.
    """

    index: int
    source: str
    key: str
    width: int = 0
    height: int = 0
    detections: Detections = dataclasses.field(default_factory=Detections.empty)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
