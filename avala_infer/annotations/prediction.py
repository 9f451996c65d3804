"""A prediction: one input item, its annotations, its timings, or the reason it failed."""

from __future__ import annotations

import dataclasses

from avala_infer.annotations.classes import Classifications
from avala_infer.annotations.detections import Detections
from avala_infer.annotations.entities import Entities
from avala_infer.annotations.semantic import SemanticMask

# What a predictor returns for one item, by model type: boxes (and instance masks), a class per pixel,
# classes of the whole item, or entity spans.
Result = Detections | SemanticMask | Classifications | Entities


@dataclasses.dataclass
class Prediction:
    """The result for one item, yielded in input order.

    ``source`` is the item's path (``"<array N>"`` / ``"<text N>"`` for in-memory inputs; ``path:N`` for line N
    of a text file read per line or record), ``key`` its name relative to the folder it was found in (used to
    name output files). ``result`` holds the annotations: :class:`Detections` for detection and instance
    segmentation, :class:`SemanticMask`, :class:`Classifications` for image and text classification,
    :class:`Entities` for named entities. ``text`` is the input text of a text item (``None`` for images);
    ``width``/``height`` the size of an image (0 for text). ``timings`` holds milliseconds per stage (read,
    decode, preprocess, collate, forward, postprocess, filter); batch stages are shared evenly among the
    batch's items. A failed item has ``error`` set and an empty result.
    """

    index: int
    source: str
    key: str
    width: int = 0
    height: int = 0
    result: Result = dataclasses.field(default_factory=Detections.empty)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    error: str | None = None
    text: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def detections(self) -> Detections:
        """The boxes of a detection or instance-segmentation prediction."""
        if not isinstance(self.result, Detections):
            raise TypeError(f"this prediction holds {type(self.result).__name__}, not Detections; use .result")
        return self.result
