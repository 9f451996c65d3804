"""Predictors made of other predictors: the detector -> SAM chain (box-prompted instance segmentation).

The chain itself is :mod:`avala_infer.predictors.segmentation.box_prompted`; what it cannot do there is load its
detector, which is found by the detector spec's (model type, backend) in the registry, a layer above the
predictors. So the registered class is this subclass, here where the registry may be imported.
"""

from __future__ import annotations

from pathlib import Path

from avala_infer.predictors.base import Predictor
from avala_infer.predictors.segmentation.box_prompted import BoxPromptedSegmenter
from avala_infer.registry import get_predictor_class
from avala_infer.specs import ModelSpec, resolve_weights
from avala_infer.trust import check_weights


def detector_class(spec: ModelSpec, weights: Path) -> type[Predictor]:
    return get_predictor_class(spec.model_type, spec.backend).for_weights(spec, weights)


class DetectorSamChain(BoxPromptedSegmenter):
    """The registered ``instance_segmentation`` / ``transformers`` predictor: see :class:`BoxPromptedSegmenter`."""

    @classmethod
    def for_weights(cls, spec: ModelSpec, weights: Path) -> type[Predictor]:
        """A chain whose detector is prompted (an open-vocabulary detector) is prompted itself: a run's vocabulary
        becomes the chain's labels, which it hands to the detector (:meth:`detector_spec`)."""
        detector = BoxPromptedSegmenter.detector_spec(spec)
        if getattr(detector_class(detector, resolve_weights(detector)), "prompted", False):
            return PromptedDetectorSamChain
        return cls

    def load_detector(self, spec: ModelSpec, device: str, threads: int | None) -> Predictor:
        weights = resolve_weights(spec)
        # the chain's own weights were checked by the engine; the detector's are checked here, before they load. A
        # pickled detector must lie in a model folder or have been added (`models add`): the engine's
        # trust_weights reaches the chain's weights only
        check_weights(spec, weights)
        return detector_class(spec, weights)(spec, weights, device, threads=threads)


class PromptedDetectorSamChain(DetectorSamChain):
    prompted = True
