"""Which parameters FAMix trains ("Freeze": minimal fine-tuning of the CLIP backbone)."""

from __future__ import annotations

from famix.models.segmenter import SegmentationNetwork
from famix.models.towers.base import Tower

# preset -> what of the backbone stays trainable (the head, and a token tower's neck, always train; the
# CLIP projection (a ViT's ``proj``, a timm tower's pooled head), unused by the dense path, never does)
FREEZE_PRESETS = {
    "last-block": "the last bottleneck block of layer4 (paper default for GTA5 / SYNTHIA sources); "
    "for a ViT / EVA, the last transformer block and the final LayerNorm; for a ConvNeXt, the last block "
    "of stage 3",
    "layer4": "all of layer4 (paper default for a Cityscapes source); for a ViT / EVA, its counterpart of "
    "ResNet's last stage: the last quarter of the transformer blocks (ceil(L/4)) and the final LayerNorm; "
    "for a ConvNeXt, stage 3 (its downsampling and blocks)",
    "none": "the whole backbone (full fine-tuning ablation)",
    "backbone": "nothing: the whole backbone is frozen, only the head trains",
}


def trainable_units(units: list[str], preset: str, family: Tower) -> set[str]:
    """The units (``SegmentationNetwork.units`` names of a tower of ``family``) that ``preset`` trains."""
    if preset not in FREEZE_PRESETS:
        raise ValueError(f"unknown freeze preset {preset!r}; choose one of: {', '.join(FREEZE_PRESETS)}")
    return {
        "last-block": {units[-1]},  # a token tower's final LayerNorm is in its last block's unit
        "layer4": set(family.last_stage(units)),
        "none": set(units),
        "backbone": set(),
    }[preset]


def apply_freeze(model: SegmentationNetwork, preset: str) -> None:
    """Set ``requires_grad`` on the backbone according to ``preset`` (see ``FREEZE_PRESETS``).

    Frozen units are also put in eval mode by ``SegmentationNetwork.train`` for the whole run.
    """
    trainable = trainable_units(model.family.unit_names(model.backbone), preset, model.family)
    for p in model.backbone.parameters():
        p.requires_grad = False
    for name in trainable:
        for p in model.unit_parameters(name):
            p.requires_grad = True
    model.train(model.training)
