"""Box-prompted segmentation (a detector's boxes prompt SAM): a tiny random SAM and a chain spec over yolo11n.

No SAM weights exist here: :func:`tiny_sam_folder` builds one from SAM's config (hidden 32, two layers, a
128-pixel input, so its mask logits are 32 x 32) and saves it with its processor, as a user's folder would be;
:func:`tiny_sam2_folder` does the same for SAM2 (a five-block Hiera backbone, the same input and mask sizes).
"""

from __future__ import annotations

from pathlib import Path

from avala_infer.annotations import Detections
from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType
from tests.conftest import ASSETS, need
from tests.coverage_base import Case, Coverage

SAM_SIZE = 128


def tiny_sam_folder(folder: Path, image_size: int = SAM_SIZE) -> Path:
    """A random-weight ``SamModel`` and its ``SamProcessor`` saved in ``folder``."""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    torch.manual_seed(0)
    vision = SamVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=16,
        output_channels=32, window_size=4, global_attn_indexes=[1], mlp_dim=64, num_pos_feats=16,
    )  # fmt: skip
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=image_size, patch_size=16, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64, iou_head_hidden_dim=32
    )
    model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder))
    mask = image_size // 4
    processor = SamProcessor(
        SamImageProcessor(
            size={"longest_edge": image_size},
            pad_size={"height": image_size, "width": image_size},
            mask_size={"longest_edge": mask},
            mask_pad_size={"height": mask, "width": mask},
        )
    )
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tiny_sam2_folder(folder: Path, image_size: int = SAM_SIZE) -> Path:
    """A random-weight ``Sam2Model`` and its ``Sam2Processor`` saved in ``folder``: a Hiera backbone of four stages
    (one block each, two in the third, whose second attends globally: a stage's first block pools, so it cannot),
    three feature levels of 32 channels at 1/4, 1/8 and 1/16 of the input."""
    import torch
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor
    from transformers.models.sam2.configuration_sam2 import (
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    torch.manual_seed(0)
    hiera = Sam2HieraDetConfig(
        hidden_size=16, image_size=[image_size, image_size], blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[16, 32, 64, 128], num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[4, 4, 4, 2], global_attention_blocks=[3],
        window_positional_embedding_background_size=[4, 4],
    )  # fmt: skip
    vision = Sam2VisionConfig(
        backbone_config=hiera, backbone_channel_list=[128, 64, 32, 16], fpn_hidden_size=32,
        backbone_feature_sizes=[[image_size // s] * 2 for s in (4, 8, 16)],
    )  # fmt: skip
    prompt = Sam2PromptEncoderConfig(hidden_size=32, image_size=image_size, patch_size=16, mask_input_channels=4)
    decoder = Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
    model = Sam2Model(Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder))
    mask = image_size // 4
    processor = Sam2Processor(
        Sam2ImageProcessor(size={"height": image_size, "width": image_size}, mask_size={"height": mask, "width": mask})
    )
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def chain_spec(sam: Path, detector: str = "yolo11n", **params) -> ModelSpec:
    return ModelSpec(
        name="yolo11n-tiny-sam",
        model_type=ModelType.INSTANCE_SEGMENTATION,
        backend="transformers",
        weights=str(sam),
        params={"detector": detector, **params},
    )


def chain_spec_file(path: Path, sam: Path, detector: str = "yolo11n") -> Path:
    """:func:`chain_spec` as a spec file at ``path``, for the CLI and projects."""
    path.write_text(
        f"name: yolo11n-tiny-sam\nmodel_type: instance_segmentation\nbackend: transformers\nweights: {sam}\n"
        f"params:\n  detector: {detector}\n",
        encoding="utf-8",
    )
    return path


def check_instances(p) -> None:
    """Instances with masks at the original size, one per box, none empty, each inside its bounds."""
    d = p.result
    assert p.error is None and isinstance(d, Detections) and len(d) > 0
    assert d.mask is not None and d.mask.shape == (len(d), p.height, p.width)
    assert d.mask.reshape(len(d), -1).any(1).all()
    for mask, (x1, y1, x2, y2) in zip(d.mask, d.mask_bounds):
        assert x1 < x2 and y1 < y2 and mask.sum() == mask[y1:y2, x1:x2].sum()


def _case(tmp_dir: Path) -> Case:
    need(ASSETS / "models" / "yolo11n.pt")
    spec = chain_spec(tiny_sam_folder(tmp_dir / "tiny-sam"))
    image = need(ASSETS / "data" / "coco128" / "images" / "val2017" / "000000000139.jpg")  # 13 boxes at 0.25
    return Case(spec, [image, image], check_instances)


COVERAGE: Coverage = {(ModelType.INSTANCE_SEGMENTATION, "transformers"): _case}
