"""The six Avala model types: the one place a model type is defined."""

from __future__ import annotations

import enum

from avala_infer.errors import ConfigError


class Text(str):
    """A literal text to label (a plain ``str`` source is a path): ``engine.predict([Text("I loved it")])``."""

    __slots__ = ()


class ModelType(str, enum.Enum):
    """Model types by their Avala names (see the Avala auto-label docs)."""

    OBJECT_DETECTION = "object_detection"
    INSTANCE_SEGMENTATION = "instance_segmentation"
    SEMANTIC_SEGMENTATION = "semantic_segmentation"
    IMAGE_CLASSIFICATION = "image_classification"
    TEXT_CLASSIFICATION = "text_classification"
    NAMED_ENTITY_RECOGNITION = "named_entity_recognition"

    @property
    def media(self) -> str:
        """What the model type reads: ``"image"`` or ``"text"``."""
        return _MEDIA[self]

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]

    @classmethod
    def parse(cls, value: str | ModelType) -> ModelType:
        """Return the model type named ``value``; an unknown name lists the valid ones."""
        if isinstance(value, ModelType):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ConfigError(f"unknown model type {value!r}; valid model types: {valid}") from None

    def __str__(self) -> str:
        return self.value


_MEDIA = {
    ModelType.OBJECT_DETECTION: "image",
    ModelType.INSTANCE_SEGMENTATION: "image",
    ModelType.SEMANTIC_SEGMENTATION: "image",
    ModelType.IMAGE_CLASSIFICATION: "image",
    ModelType.TEXT_CLASSIFICATION: "text",
    ModelType.NAMED_ENTITY_RECOGNITION: "text",
}

_DESCRIPTIONS = {
    ModelType.OBJECT_DETECTION: "Detect and locate objects",
    ModelType.INSTANCE_SEGMENTATION: "Object instance segmentation",
    ModelType.SEMANTIC_SEGMENTATION: "Pixel-level segmentation",
    ModelType.IMAGE_CLASSIFICATION: "Classify entire images",
    ModelType.TEXT_CLASSIFICATION: "Classify text documents",
    ModelType.NAMED_ENTITY_RECOGNITION: "Extract entities from text",
}


# How a named_entity_recognition model's sub-token tags become entity spans (transformers' aggregation strategies);
# jobs, the engine and the CLI's config files all take these names.
AGGREGATIONS = ("none", "simple", "first", "average", "max")
# whole words, as labeling tools expect: "simple" groups sub-tokens by their own tags and can cut a word in two
# ("Nad" + "im"); "first" tags each word by its first sub-token, as the CoNLL scorers do
DEFAULT_AGGREGATION = "first"
