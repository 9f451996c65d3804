"""Grounding DINO: a fixed number of query boxes, each scored against every token of one text of all prompts.

The prompts are joined as ``GroundingDinoProcessor`` joins candidate labels (lower case, ``"a cat. a dog."``) and
tokenized once, at load, with each token's characters so that each prompt knows its tokens. The text encoder runs
inside every forward (the model fuses text and image features layer by layer). A box's score for a prompt is the
best sigmoid over that prompt's tokens: ``post_process_grounded_object_detection`` scores a box as the best over
all tokens and names it by the tokens above ``text_threshold``; scoring each prompt on its own tokens is that rule
per prompt, without the separators' and special tokens' scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from avala_infer.errors import ModelLoadError, ModelSpecError
from avala_infer.predictors.detection.open_vocab import OpenVocabDetector


def joined_prompts(prompts: tuple[str, ...]) -> tuple[str, list[tuple[int, int]]]:
    """The one text Grounding DINO reads (``"a cat. a dog."``, as its processor joins candidate labels) and the
    (start, end) characters of each prompt in it."""
    text, spans = "", []
    for prompt in prompts:
        words = prompt.strip().lower()
        if text:
            text += " "
        spans.append((len(text), len(text) + len(words)))
        text += words + "."
    return text, spans


class GroundingDinoDetector(OpenVocabDetector):
    def _encode_prompts(self) -> None:
        import torch

        bad = [prompt for prompt in self.prompts if "." in prompt]
        if bad:
            raise ModelSpecError(
                f"model {self.spec.name!r}: Grounding DINO separates prompts with '.', so a prompt cannot hold one: "
                f"{bad}"
            )
        tokenizer = self.processor.tokenizer
        if not getattr(tokenizer, "is_fast", False):
            raise ModelLoadError(f"{self.weights}: Grounding DINO needs a fast tokenizer (tokenizer.json) here")
        text, spans = joined_prompts(self.prompts)
        encoded = tokenizer(text, return_offsets_mapping=True, return_token_type_ids=True, return_tensors="pt")
        length = encoded["input_ids"].shape[1]
        if length > self.model.config.max_text_len:
            raise ModelSpecError(
                f"model {self.spec.name!r}: the {len(self.prompts)} prompts make {length} tokens, more than the "
                f"{self.model.config.max_text_len} Grounding DINO reads; ask for fewer labels or shorter prompts"
            )
        offsets = encoded.pop("offset_mapping")[0].numpy()
        tokens = np.zeros((len(self.prompts), length), dtype=bool)
        for i, (start, end) in enumerate(spans):
            tokens[i] = (offsets[:, 0] >= start) & (offsets[:, 1] <= end) & (offsets[:, 1] > offsets[:, 0])
        if not tokens.any(1).all():
            raise ModelSpecError(f"model {self.spec.name!r}: a prompt makes no tokens: {self.prompts}")
        self.text_inputs = {name: value.to(self.device) for name, value in encoded.items()}
        self.prompt_tokens = torch.as_tensor(tokens, device=self.device)  # (P, T)

    def forward(self, batch) -> tuple[Any, Any]:
        size = batch.shape[0]
        text = {name: value.expand(size, -1) for name, value in self.text_inputs.items()}
        outputs = self.model(pixel_values=batch, **text)
        length = self.prompt_tokens.shape[1]
        probs = outputs.logits[..., :length].float().sigmoid()  # (B, Q, T)
        per_prompt = probs[:, :, None, :].masked_fill(~self.prompt_tokens, 0.0).amax(-1)  # (B, Q, P)
        return per_prompt, outputs.pred_boxes
