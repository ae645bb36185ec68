"""The FAMix segmenter: CLIP ResNet backbone + DeepLabv3+ head, with a hook for feature restyling."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from famix.models.backbone import backbone_units, feature_channels, prepare_backbone, unit_modules
from famix.models.deeplab import DeepLabHeadV3Plus

Restyle = Callable[[torch.Tensor], torch.Tensor]


class Segmenter(nn.Module):
    """``backbone`` (a dilated open_clip ModifiedResNet) and ``classifier`` (DeepLabv3+), named as in
    official FAMix checkpoints.

    ``forward(x, restyle)`` applies ``restyle`` to the layer1 features, which then feed both layer2 and
    the head's low-level projection (FAMix's style mixing point). Units whose parameters are all frozen
    run without autograd, and stay in eval mode (frozen BatchNorm statistics) whenever the model trains.
    """

    def __init__(
        self, visual: nn.Module, num_classes: int, output_stride: int = 16, dilation: str = "official"
    ):
        super().__init__()
        self.backbone = prepare_backbone(visual, output_stride, dilation)
        low, out = feature_channels(self.backbone)
        self.classifier = DeepLabHeadV3Plus(low, out, num_classes, output_stride)
        self.num_classes = num_classes
        self.output_stride = output_stride

    @property
    def low_channels(self) -> int:
        return feature_channels(self.backbone)[0]

    def frozen_units(self) -> list[str]:
        """Names of backbone units (see ``backbone_units``) with no trainable parameter."""
        return [
            name
            for name, _ in backbone_units(self.backbone)
            if not any(p.requires_grad for m in unit_modules(self.backbone, name) for p in m.parameters())
        ]

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        if mode:
            for name in self.frozen_units():
                for m in unit_modules(self.backbone, name):
                    m.eval()
        return self

    def features(self, x: torch.Tensor, restyle: Restyle | None = None) -> dict[str, torch.Tensor]:
        """x: [B, 3, H, W] -> {"low": layer1 [B, C1, H/4, W/4] (restyled), "out": [B, C4, H/OS, W/OS]}."""
        frozen = set(self.frozen_units())
        grad = torch.is_grad_enabled()
        low = None
        for name, unit in backbone_units(self.backbone):
            with torch.set_grad_enabled(grad and name not in frozen):
                x = unit(x)
            if name == "layer1":
                if restyle is not None:
                    x = restyle(x)
                low = x
        return {"low": low, "out": x}

    def forward(self, x: torch.Tensor, restyle: Restyle | None = None) -> torch.Tensor:
        """x: [B, 3, H, W] CLIP-normalised -> logits [B, K, H, W]."""
        feats = self.features(x, restyle)
        logits = self.classifier(feats["low"], feats["out"])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
