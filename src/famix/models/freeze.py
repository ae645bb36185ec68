"""Which parameters FAMix trains ("Freeze": minimal fine-tuning of the CLIP backbone)."""

from __future__ import annotations

import math

from famix.models.segmenter import Segmenter

# preset -> what of the backbone stays trainable (the head, and a ViT's neck, always train; a ViT's CLIP
# projection ``proj``, unused by the dense path, never does)
FREEZE_PRESETS = {
    "last-block": "the last bottleneck block of layer4 (paper default for GTA5 / SYNTHIA sources); "
    "for a ViT, the last transformer block and ln_post",
    "layer4": "all of layer4 (paper default for a Cityscapes source); for a ViT, its counterpart of "
    "ResNet's last stage: the last quarter of the transformer blocks (ceil(L/4)) and ln_post",
    "none": "the whole backbone (full fine-tuning ablation)",
    "backbone": "nothing: the whole backbone is frozen, only the head trains",
}


def trainable_units(units: list[str], preset: str) -> set[str]:
    """The units (``Segmenter.units`` names, ResNet or ViT) that ``preset`` trains."""
    if preset not in FREEZE_PRESETS:
        raise ValueError(f"unknown freeze preset {preset!r}; choose one of: {', '.join(FREEZE_PRESETS)}")
    blocks = [n for n in units if n.startswith("block.")]  # ViT transformer blocks, in order
    if blocks:
        last_stage = blocks[-math.ceil(len(blocks) / 4) :]
    else:
        last_stage = [n for n in units if n.startswith("layer4.")]
    return {
        "last-block": {units[-1]},  # ln_post is in the last ViT block's unit
        "layer4": set(last_stage),
        "none": set(units),
        "backbone": set(),
    }[preset]


def apply_freeze(model: Segmenter, preset: str) -> None:
    """Set ``requires_grad`` on the backbone according to ``preset`` (see ``FREEZE_PRESETS``).

    Frozen units are also put in eval mode by ``Segmenter.train`` for the whole run.
    """
    trainable = trainable_units([name for name, _ in model.units()], preset)
    for p in model.backbone.parameters():
        p.requires_grad = False
    for name in trainable:
        for p in model.unit_parameters(name):
            p.requires_grad = True
    model.train(model.training)
