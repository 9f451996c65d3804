"""Confidence, label and label-mapping filters: one pure step the engine applies after every backend.

Order: the label mapping renames, merges or drops model classes first; ``labels`` and per-label thresholds
then speak the mapped names (the project's vocabulary), and the confidence thresholds apply last.
Unknown names are errors that list the names that exist.

Classes merged by the mapping (``cat->animal``, ``dog->animal``) become one class per item: its score is the sum
of theirs for a softmax classifier (the probability of any of them) and the highest of theirs for a multi-label
one (independent sigmoids); thresholds apply to that score. Boxes and entities keep one row per instance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from avala_infer.annotations import UNLABELED, Classifications, Result, SemanticMask
from avala_infer.errors import ConfigError, UnknownLabelError


@dataclasses.dataclass(frozen=True)
class LabelFilter:
    """A compiled filter.

    ``output_labels`` is the vocabulary after mapping and keeping (stable order: first appearance in the
    model's labels); ``class_to_output[model_class_id]`` is the output id or -1 to drop;
    ``thresholds[output_id]`` is the minimum score for that label.
    """

    model_labels: tuple[str, ...]
    output_labels: tuple[str, ...]
    class_to_output: np.ndarray
    thresholds: np.ndarray
    # whether each output label comes from one model class (no merging): a classification then filters as boxes
    # do, in its own order (see apply); set from class_to_output
    one_to_one: bool = dataclasses.field(init=False, repr=False, compare=False)
    names: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)  # output_labels, an object array
    # the threshold of each output id, then +inf: indexed by class_to_output, a dropped class (-1) keeps nothing
    floors: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kept = self.class_to_output[self.class_to_output >= 0]
        object.__setattr__(self, "one_to_one", len(np.unique(kept)) == len(kept))
        names = np.empty(len(self.output_labels), dtype=object)
        names[:] = self.output_labels
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "floors", np.append(self.thresholds, np.float32(np.inf)).astype(np.float32))

    @property
    def score_floor(self) -> float:
        """The lowest threshold any kept label has: backends may discard anything below it early."""
        return float(self.thresholds.min()) if len(self.thresholds) else 1.0

    def apply(self, result: Result) -> Result:
        """Map, keep and threshold; returns the result in the output vocabulary.

        Works on any result with parallel ``class_id``/``confidence``/``class_name`` arrays (boxes, classes,
        entities); a :class:`SemanticMask` is filtered per pixel.
        """
        if isinstance(result, SemanticMask):
            return self._apply_per_pixel(result)
        if isinstance(result, Classifications) and len(result):
            return self._apply_classes(result) if not self.one_to_one else self._keep_classes(result)
        if not len(result):
            return result  # keeps an empty (0, H, W) mask array when there is one
        keep, out_ids = self._kept(result)
        # nothing dropped (the common case): no indexing, which would copy every (H, W) instance mask
        kept = result if keep.all() else result[keep]
        return dataclasses.replace(kept, class_id=out_ids, class_name=self.names[out_ids])

    def _kept(self, result: Result) -> tuple[np.ndarray, np.ndarray]:
        """Which rows of ``result`` the filter keeps (mapped, kept, at their label's threshold), and their output
        ids."""
        self._check_ids(result.class_id)
        out_ids = self.class_to_output[result.class_id]
        keep = result.confidence >= self.floors[out_ids]  # a dropped class (-1) meets +inf
        return keep, out_ids[keep]

    def _keep_classes(self, result: Classifications) -> Classifications:
        """A classification under a one-to-one filter (no class merged into another: the common case) keeps its
        rows and their order, best first with ties in the model's class order, which is the output vocabulary's
        order too (first appearance in the model's labels): what :meth:`_apply_classes` gives, in a few numpy
        calls an item where that took ~14 µs (a text classifier's filter stage, on the GPU engine's postprocess
        thread)."""
        keep, out_ids = self._kept(result)
        return Classifications.of_arrays(out_ids, result.confidence[keep], self.names[out_ids], result.multi_label)

    def _apply_classes(self, result: Classifications) -> Classifications:
        """One row per output class: merged classes' scores summed (softmax) or their max (multi-label), then
        thresholded; sorted best first (ties in vocabulary order)."""
        self._check_ids(result.class_id)
        out_ids = self.class_to_output[result.class_id]
        keep = out_ids >= 0
        out_ids, scores = out_ids[keep], result.confidence[keep].astype(np.float64)
        merged = np.zeros(len(self.output_labels), dtype=np.float64)
        present = np.zeros(len(self.output_labels), dtype=bool)
        present[out_ids] = True
        if result.multi_label:
            np.maximum.at(merged, out_ids, scores)
        else:
            np.add.at(merged, out_ids, scores)
        merged = np.minimum(merged, 1.0).astype(np.float32)  # a sum of probabilities, rounded, stays a probability
        ids = np.flatnonzero(present & (merged >= self.thresholds))
        ids = ids[np.argsort(-merged[ids], kind="stable")]
        return Classifications(ids, merged[ids], self.names[ids], result.multi_label)

    def _check_ids(self, ids: np.ndarray) -> None:
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.class_to_output)):
            raise ValueError(f"class ids must be in [0, {len(self.class_to_output)}), got {ids.min()}..{ids.max()}")

    def _apply_per_pixel(self, mask: SemanticMask) -> SemanticMask:
        """Pixels of dropped classes, or below their class's threshold, become ``UNLABELED`` (-1)."""
        class_map = mask.class_map
        self._check_ids(mask.present())  # one bincount, cached on the mask (a full sort with np.unique)
        lookup = np.append(self.class_to_output, UNLABELED).astype(np.int32)  # index -1 -> UNLABELED
        out = lookup[class_map]
        out[mask.score_map < self.floors[out]] = UNLABELED
        return SemanticMask(out, mask.score_map, self.output_labels)


def _check_threshold(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be between 0 and 1, got {value}")
    return value


def build_filter(
    model_labels: Sequence[str],
    *,
    confidence_threshold: float = 0.25,
    labels: Sequence[str] | None = None,
    label_thresholds: Mapping[str, float] | None = None,
    label_map: Mapping[str, str | None] | None = None,
) -> LabelFilter:
    """Compile and validate a filter against the model's labels; raises before any work starts."""
    model_labels = tuple(str(x) for x in model_labels)
    default = _check_threshold("confidence_threshold", confidence_threshold)
    label_map = dict(label_map or {})
    unknown = sorted(set(label_map) - set(model_labels))
    if unknown:
        raise UnknownLabelError(
            f"label_map names {unknown} that the model does not have; model labels: {', '.join(model_labels)}"
        )
    mapped = [label_map.get(name, name) for name in model_labels]
    vocabulary = list(dict.fromkeys(m for m in mapped if m is not None))
    if isinstance(labels, (str, bytes)):
        raise ConfigError(f"labels must be a list of label names, e.g. ['car'], not the string {labels!r}")
    if labels is not None:
        labels = [str(x).strip() for x in labels if str(x).strip()]
    if labels:  # None, or no name at all (a job's empty list, `--labels ","`): every label, as a job does
        unknown = sorted(set(labels) - set(vocabulary))
        if unknown:
            raise UnknownLabelError(
                f"unknown label(s) {unknown}; this model's labels{' after mapping' if label_map else ''} are: "
                f"{', '.join(vocabulary)}"
            )
        wanted = set(labels)
        vocabulary = [name for name in vocabulary if name in wanted]
    index = {name: i for i, name in enumerate(vocabulary)}
    class_to_output = np.array([index.get(m, -1) if m is not None else -1 for m in mapped], dtype=np.int64)
    thresholds = np.full(len(vocabulary), default, dtype=np.float32)
    for name, value in (label_thresholds or {}).items():
        if name not in index:
            all_names = list(dict.fromkeys(m for m in mapped if m is not None))
            if name in all_names:
                continue  # a threshold for a label the `labels` list drops: harmless
            raise UnknownLabelError(f"label_thresholds names unknown label {name!r}; labels: {', '.join(all_names)}")
        thresholds[index[name]] = _check_threshold(f"threshold for {name!r}", value)
    return LabelFilter(model_labels, tuple(vocabulary), class_to_output, thresholds)
