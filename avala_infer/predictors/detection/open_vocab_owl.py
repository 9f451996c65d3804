"""OWLv2 and OWL-ViT: one box per image patch, scored against each prompt's CLIP text embedding.

The prompts go through the processor's tokenizer (as ``processor(text=...)`` pads them) and the text tower once,
at load; a batch runs the vision tower and the two heads only (``image_embedder``, ``class_predictor`` with the
stored embeddings, ``box_predictor``: the steps of ``OwlViTForObjectDetection.forward``/
``Owlv2ForObjectDetection.forward``). A box's score for a prompt is the sigmoid of its logit, as
``post_process_object_detection``. OWLv2's processor pads each image to a square (bottom and right) before
resizing, so its normalized boxes scale by the longer side; OWL-ViT's by width and height.
"""

from __future__ import annotations

from typing import Any

from avala_infer.predictors.detection.open_vocab import OpenVocabDetector


class OwlDetector(OpenVocabDetector):
    def _encode_prompts(self) -> None:
        import torch

        self._core = self.model.owlv2 if self.model.config.model_type == "owlv2" else self.model.owlvit
        self._square = self.model.config.model_type == "owlv2"
        text = self.processor(text=[list(self.prompts)], return_tensors="pt")
        with torch.inference_mode():
            pooled = self._core.text_model(
                input_ids=text["input_ids"].to(self.device), attention_mask=text["attention_mask"].to(self.device)
            ).pooler_output
            embeds = self._core.text_projection(pooled)
            self.query_embeds = embeds / torch.linalg.norm(embeds, ord=2, dim=-1, keepdim=True)  # (P, D)

    def normalized_scale(self, orig_shape: tuple[int, int]) -> tuple[float, float]:
        if self._square:
            side = float(max(orig_shape))
            return side, side
        return super().normalized_scale(orig_shape)

    def forward(self, batch) -> tuple[Any, Any]:
        import torch

        feature_map, _ = self.model.image_embedder(pixel_values=batch)
        size, rows, cols, width = feature_map.shape
        image_feats = torch.reshape(feature_map, (size, rows * cols, width))
        queries = self.query_embeds[None].expand(size, -1, -1)
        logits, _ = self.model.class_predictor(image_feats, queries, None)
        boxes = self.model.box_predictor(image_feats, feature_map)
        return torch.sigmoid(logits.float()), boxes
