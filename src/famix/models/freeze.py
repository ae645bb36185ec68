"""Which parameters FAMix trains ("Freeze": minimal fine-tuning of the CLIP backbone)."""

from __future__ import annotations

from famix.models.backbone import backbone_units, unit_modules
from famix.models.segmenter import Segmenter

# preset -> what of the backbone stays trainable (the head always trains)
FREEZE_PRESETS = {
    "last-block": "the last bottleneck block of layer4 (paper default for GTA5 / SYNTHIA sources)",
    "layer4": "all of layer4 (paper default for a Cityscapes source)",
    "none": "the whole backbone (full fine-tuning ablation)",
    "backbone": "nothing: the whole backbone is frozen, only the head trains",
}


def apply_freeze(model: Segmenter, preset: str) -> None:
    """Set ``requires_grad`` on the backbone according to ``preset`` (see ``FREEZE_PRESETS``).

    Frozen units are also put in eval mode by ``Segmenter.train`` for the whole run.
    """
    if preset not in FREEZE_PRESETS:
        raise ValueError(f"unknown freeze preset {preset!r}; choose one of: {', '.join(FREEZE_PRESETS)}")
    names = [name for name, _ in backbone_units(model.backbone)]
    last = names[-1]
    trainable = {
        "last-block": {last},
        "layer4": {n for n in names if n.startswith("layer4.")},
        "none": set(names),
        "backbone": set(),
    }[preset]
    for p in model.backbone.parameters():
        p.requires_grad = False
    for name in trainable:
        for m in unit_modules(model.backbone, name):
            for p in m.parameters():
                p.requires_grad = True
    model.train(model.training)
