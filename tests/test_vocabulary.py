"""A run's vocabulary for prompted models (Engine(vocabulary=)) and the prompts each label means (prompts.py).

The prompted models themselves (open-vocabulary detectors, zero-shot classifiers) are tested in their own files;
these are the rules every one of them shares."""

from __future__ import annotations

import dataclasses

import pytest

from avala_infer.engine.pipeline import Engine, prompted_vocabulary
from avala_infer.errors import ConfigError, ModelSpecError
from avala_infer.predictors.base import Predictor
from avala_infer.predictors.prompts import label_prompts
from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType


class _Prompted(Predictor):
    """Only the class attribute matters to the vocabulary check; nothing is loaded."""

    prompted = True

    def prepare(self, data): ...
    def collate(self, prepared): ...
    def forward(self, batch): ...
    def postprocess(self, raw, prepared, **options): ...


def _spec(**fields) -> ModelSpec:
    base = {"name": "owl", "model_type": ModelType.OBJECT_DETECTION, "backend": "transformers", "weights": "owl/"}
    return ModelSpec(**{**base, **fields})


def test_a_fixed_vocabulary_model_refuses_a_vocabulary_and_says_to_filter_instead(weights_pt):
    with pytest.raises(ConfigError, match=r"fixed vocabulary.*labels="):
        Engine(weights_pt, device="cpu", vocabulary=["forklift"])


def test_a_vocabulary_is_checked_names_once_each():
    spec = _spec()
    assert prompted_vocabulary(_Prompted, spec, [" forklift", "pallet "]) == ("forklift", "pallet")
    with pytest.raises(ConfigError, match="one or more non-empty"):
        prompted_vocabulary(_Prompted, spec, [])
    with pytest.raises(ConfigError, match="one or more non-empty"):
        prompted_vocabulary(_Prompted, spec, ["car", " "])
    with pytest.raises(ConfigError, match=r"\['car'\] more than once"):
        prompted_vocabulary(_Prompted, spec, ["car", "truck", "car"])


def test_each_label_is_its_own_prompt_unless_the_spec_lists_prompts_for_it():
    spec = _spec(labels=("car", "forklift"), params={"prompts": {"car": ["car", "sedan", "suv"], "boat": "ship"}})
    assert label_prompts(spec) == {"car": ("car", "sedan", "suv"), "forklift": ("forklift",)}
    templated = dataclasses.replace(spec, params={**spec.params, "template": "a photo of a {}"})
    assert label_prompts(templated)["forklift"] == ("a photo of a forklift",)
    assert label_prompts(templated, template="{}")["car"] == ("car", "sedan", "suv")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, r"is prompted: give its vocabulary as `labels: \[\.\.\.\]`"),
        ({"labels": ("car",), "params": {"prompts": ["car"]}}, "must map labels to lists of prompts"),
        ({"labels": ("car",), "params": {"prompts": {"car": []}}}, r"params.prompts.car .* non-empty prompts"),
        ({"labels": ("car",), "params": {"template": "a photo"}}, r"params.template .* one \{\}"),
    ],
)
def test_prompt_mistakes_name_the_field_and_the_fix(fields, message):
    with pytest.raises(ModelSpecError, match=message):
        label_prompts(_spec(**fields))
