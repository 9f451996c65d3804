"""Tiny random-weight open-vocabulary detectors (OWLv2, OWL-ViT, Grounding DINO) saved as model folders, for the
tests (tests/test_open_vocab.py, the registry coverage, the SAM chain's prompted detector): no pretrained weights of
these families are here. Each is built from its config (seeded), its heads scaled down so that scores spread over
(0, 1) instead of saturating, and saved with a processor whose tokenizer is built offline."""

from __future__ import annotations

import json
from pathlib import Path

from avala_infer.annotations import Detections
from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType
from tests.conftest import ASSETS, need
from tests.coverage_base import Case, Coverage

WORDS = ["a", "photo", "of", "person", "bus", "car", "sedan", "suv", "tie", "dog"]


def clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer whose vocabulary spells WORDS (each a chain of merges), written to ``folder``."""
    from transformers import CLIPTokenizer

    chars = sorted(set("".join(WORDS)))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges: list[str] = []
    for word in WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            vocab.setdefault(parts[0] + parts[1], len(vocab))
            parts = [parts[0] + parts[1], *parts[2:]]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    # model_max_length as real OWL / CLIP tokenizers have it (16 = the text models' positions here): the OWL processor
    # pads every prompt to it, so prompts of any token length (a word spelled letter by letter) fit one batch
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>", model_max_length=16
    )


def scale_heads(model, factor: float) -> None:
    """Random heads saturate every sigmoid (scores of 1.0, boxes of zero size): scale their weights down."""
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(("class_head", "box_head", "class_embed", "bbox_embed")) and name.endswith("weight"):
                parameter.mul_(factor)


def owl_folder(root: Path, family: str) -> Path:
    import torch
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
        OwlViTConfig,
        OwlViTForObjectDetection,
        OwlViTImageProcessor,
        OwlViTProcessor,
    )

    tokenizer = clip_tokenizer(root / f"{family}-tokenizer")
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16, bos_token_id=end - 1, eos_token_id=end,
                pad_token_id=end)  # fmt: skip
    # OWLv2's image processor smooths before it shrinks (scipy, seconds per photo at 64 px): 256 px is faster
    side, patch = (256, 32) if family == "owlv2" else (64, 16)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=side,
                  patch_size=patch)  # fmt: skip
    torch.manual_seed(0)
    if family == "owlv2":
        model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
        processor = Owlv2Processor(Owlv2ImageProcessor(size={"height": side, "width": side}), tokenizer)
    else:
        model = OwlViTForObjectDetection(OwlViTConfig(text_config=text, vision_config=vision, projection_dim=32))
        image_processor = OwlViTImageProcessor(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64})
        processor = OwlViTProcessor(image_processor, tokenizer)
    scale_heads(model, 0.05)
    folder = root / family
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def owl_spec(path: Path, weights: Path, labels: list[str], *, name: str = "tiny-owl", params: str = "") -> Path:
    """A spec file at ``path`` for an OWL folder (object_detection / transformers): ``labels`` and, as YAML text,
    ``params`` (e.g. ``"prompts: {car: [car, sedan]}"``)."""
    text = (
        f"name: {name}\nmodel_type: object_detection\nbackend: transformers\nweights: {weights}\n"
        f"labels: [{', '.join(labels)}]\n"
    )
    path.write_text(text + (f"params:\n  {params}\n" if params else ""), encoding="utf-8")
    return path


def grounding_dino_folder(root: Path) -> Path:
    import torch
    from transformers import (
        AutoTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    tokenizer = AutoTokenizer.from_pretrained(need(ASSETS / "models" / "sentiment-minilm-sst2"))
    config = GroundingDinoConfig(
        backbone_config={"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16, 16, 16],
                         "depths": [1, 1, 1, 1], "out_features": ["stage2", "stage3", "stage4"]},
        text_config={"model_type": "bert", "vocab_size": tokenizer.vocab_size, "hidden_size": 32,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=30, num_feature_levels=3,
        encoder_n_points=2, decoder_n_points=2, max_text_len=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(config)
    processor = GroundingDinoProcessor(
        GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}), tokenizer
    )
    folder = root / "grounding-dino"
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _case(tmp_dir: Path) -> Case:
    spec = ModelSpec(
        name="tiny-owlvit", model_type=ModelType.OBJECT_DETECTION, backend="transformers",
        weights=str(owl_folder(tmp_dir, "owlvit")), labels=("person", "car"),
    )  # fmt: skip
    images = sorted(need(ASSETS / "images" / "ultralytics").glob("*.jpg"))

    def check(p) -> None:
        d = p.result
        assert isinstance(d, Detections) and len(d) > 0 and set(d.class_name) <= {"person", "car"}
        assert d.mask is None and d.prompt is not None and (d.xyxy[:, 2:] <= [p.width, p.height]).all()

    return Case(spec, images, check, {"confidence_threshold": 0.45})


COVERAGE: Coverage = {(ModelType.OBJECT_DETECTION, "transformers"): _case}
