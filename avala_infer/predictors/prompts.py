"""Text prompts of prompted models (open-vocabulary detectors, zero-shot classifiers): which texts each label means.

A prompted model's labels are its vocabulary (the spec's ``labels``, or a run's: ``Engine(vocabulary=)``). Each
label is prompted by itself, or by the texts the spec lists for it under ``params.prompts``::

    labels: [car, forklift]
    params:
      prompts: {car: [car, sedan, suv]}   # several prompts for one label: the label scores as the best of them
      template: "a photo of a {}"         # optional: each prompt is put through it (zero-shot classifiers)

``params.prompts`` may name labels the run does not ask for (a spec can carry prompts for a large vocabulary
and a job pick a few); every label it names must have at least one non-empty prompt.
"""

from __future__ import annotations

from collections.abc import Mapping

from avala_infer.errors import ModelSpecError
from avala_infer.specs import ModelSpec


def _where(spec: ModelSpec) -> str:
    return f" in {spec.source}" if spec.source else ""


def label_prompts(spec: ModelSpec, template: str | None = None) -> dict[str, tuple[str, ...]]:
    """``{label: (prompt, ...)}`` for every label of ``spec``, in label order, each prompt put through
    ``template`` (``params.template`` when not given; ``"{}"``: as written)."""
    if spec.labels_from_weights:
        raise ModelSpecError(
            f"model {spec.name!r}{_where(spec)} is prompted: give its vocabulary as `labels: [...]` in the spec, "
            "or per run (a job's labels, --labels, Engine(vocabulary=))"
        )
    mapping = spec.params.get("prompts") or {}
    if not isinstance(mapping, Mapping):
        raise ModelSpecError(
            f"params.prompts of model {spec.name!r}{_where(spec)} must map labels to lists of prompts, "
            f"got {type(mapping).__name__}"
        )
    template = template if template is not None else spec.params.get("template", "{}")
    if not isinstance(template, str) or "{}" not in template:
        raise ModelSpecError(
            f"params.template of model {spec.name!r}{_where(spec)} must be a text with one {{}} for the prompt, "
            f"got {template!r}"
        )
    prompts: dict[str, tuple[str, ...]] = {}
    for label in spec.labels:
        texts = mapping.get(label, [label])
        texts = [texts] if isinstance(texts, str) else list(texts)
        texts = [str(text).strip() for text in texts]
        if not texts or not all(texts):
            raise ModelSpecError(
                f"params.prompts.{label} of model {spec.name!r}{_where(spec)} needs one or more non-empty prompts"
            )
        prompts[label] = tuple(template.format(text) for text in texts)
    return prompts
