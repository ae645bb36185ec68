"""The FAMix segmenter: a CLIP image tower (ResNet or ViT) + DeepLabv3+ head, with a hook for restyling."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from famix.models.backbone import backbone_units, feature_channels, prepare_backbone, unit_modules
from famix.models.deeplab import DeepLabHeadV3Plus
from famix.models.towers import is_vit, style_channels, style_features, style_relu
from famix.models.vit import (
    build_neck,
    low_level_block,
    pad_to_multiple,
    prepare_vit,
    tokens_to_map,
    vit_unit_modules,
    vit_unit_parameters,
    vit_units,
)

Restyle = Callable[[torch.Tensor], torch.Tensor]


class Segmenter(nn.Module):
    """``backbone`` (a CLIP image tower) and ``classifier`` (DeepLabv3+), named as in official FAMix
    checkpoints; ViTs add ``neck``, the learned upsampler of their low-level map (always trained).

    ``forward(x, restyle)`` applies ``restyle`` to the *style map* (``style_features``), which then feeds
    both the deep path and the head's low-level branch (FAMix's style mixing point):

    - ResNet (``models/backbone.py``, dilated to ``output_stride``): the style map is layer1
      [B, C1, H/4, W/4]; it is also the low-level feature; layer2..layer4 make "out" [B, C4, H/OS, W/OS].
    - ViT (``models/vit.py``, ``output_stride`` = its patch size P): the style map is the patch embedding
      conv1(x) [B, W, H/P, W/P]; "low" is the neck of the tokens after block ceil(L/4) [B, W, ~H/4, ~W/4],
      "out" the last tokens [B, W, H/P, W/P]. ``forward`` zero-pads inputs to multiples of P and crops
      the logits back.

    Units whose parameters are all frozen run without autograd, and stay in eval mode (frozen BatchNorm
    statistics) whenever the model trains.
    """

    def __init__(
        self, visual: nn.Module, num_classes: int, output_stride: int = 16, dilation: str = "official"
    ):
        super().__init__()
        self.is_vit = is_vit(visual)
        if self.is_vit:
            self.backbone = prepare_vit(visual, output_stride)
            low = out = style_channels(self.backbone)
            self.neck = build_neck(low, output_stride)
        else:
            self.backbone = prepare_backbone(visual, output_stride, dilation)
            low, out = feature_channels(self.backbone)
            self.neck = None
        self.classifier = DeepLabHeadV3Plus(low, out, num_classes, output_stride)
        self.num_classes = num_classes
        self.output_stride = output_stride

    @property
    def low_channels(self) -> int:
        """Channels of the style map (ResNet layer1's, ViT width): what style banks must match."""
        return style_channels(self.backbone)

    @property
    def style_relu(self) -> bool:
        """Whether restyled style maps take a ReLU: ResNet layer1 ends in one; ViT patch embeddings are
        signed and must not be clamped at 0."""
        return style_relu(self.backbone)

    def style_features(self, x: torch.Tensor) -> torch.Tensor:
        """The map the restyle hook sees, unrestyled: ResNet layer1(stem(x)) [B, C1, H/4, W/4]; ViT conv1(x)
        [B, W, H/P, W/P]."""
        return style_features(self.backbone, x)

    def units(self) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        """The backbone as ordered (name, callable) units: ResNet stem, layer1..layer3, layer4.i; ViT
        patch_embed, embed, block.0..block.{L-1} (ln_post with the last block)."""
        return vit_units(self.backbone) if self.is_vit else backbone_units(self.backbone)

    def unit_modules(self, name: str) -> list[nn.Module]:
        """The submodules of one unit (put in eval mode when it is frozen)."""
        return vit_unit_modules(self.backbone, name) if self.is_vit else unit_modules(self.backbone, name)

    def unit_parameters(self, name: str) -> list[nn.Parameter]:
        """The parameters of one unit (what freeze presets switch)."""
        if self.is_vit:
            return vit_unit_parameters(self.backbone, name)
        return [p for m in unit_modules(self.backbone, name) for p in m.parameters()]

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Everything outside the CLIP backbone (the ViT neck, the DeepLabv3+ head): always trained."""
        return (p for n, p in self.named_parameters() if not n.startswith("backbone."))

    def frozen_units(self) -> list[str]:
        """Names of backbone units (see ``units``) with no trainable parameter."""
        return [
            name for name, _ in self.units() if not any(p.requires_grad for p in self.unit_parameters(name))
        ]

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        if mode:
            for name in self.frozen_units():
                for m in self.unit_modules(name):
                    m.eval()
        return self

    @property
    def style_site(self) -> str:
        """The unit (see ``units``) whose output is the style map restyle applies to."""
        return "patch_embed" if self.is_vit else "layer1"

    def _low_site(self) -> str:
        """The unit whose output is the low-level feature (a ViT's goes through the neck)."""
        if self.is_vit:
            return f"block.{low_level_block(len(self.backbone.transformer.resblocks))}"
        return "layer1"

    def features(self, x: torch.Tensor, restyle: Restyle | None = None) -> dict[str, torch.Tensor]:
        """x: [B, 3, H, W] -> {"low": [B, C_low, ~H/4, ~W/4], "out": [B, C_out, H/OS, W/OS]}; ``restyle``
        applies to the style map (see the class docstring). ViT inputs must have sides that are multiples
        of P (``forward`` pads them)."""
        # (not while TorchScript traces: exported models take multiples of P only, see engine/export.py)
        p = self.output_stride
        if self.is_vit and not torch.jit.is_tracing() and (x.shape[-2] % p or x.shape[-1] % p):
            raise ValueError(
                f"a ViT segmenter's features need sides that are multiples of the patch size "
                f"{p}, got {x.shape[-2]}x{x.shape[-1]} (forward pads them)"
            )
        style_site, low_site = self.style_site, self._low_site()
        frozen = set(self.frozen_units())
        grad = torch.is_grad_enabled()
        low = grid = None
        for name, unit in self.units():
            with torch.set_grad_enabled(grad and name not in frozen):
                x = unit(x)
            if name == style_site:
                if restyle is not None:
                    x = restyle(x)
                grid = x.shape[-2:]
            if name == low_site:
                low = x
        if self.is_vit:
            return {"low": self.neck(tokens_to_map(low, grid)), "out": tokens_to_map(x, grid)}
        return {"low": low, "out": x}

    def forward(self, x: torch.Tensor, restyle: Restyle | None = None) -> torch.Tensor:
        """x: [B, 3, H, W] CLIP-normalised -> logits [B, K, H, W]."""
        size = x.shape[-2:]
        if self.is_vit and not torch.jit.is_tracing():  # traced (exported) models take multiples of P
            x = pad_to_multiple(x, self.output_stride)
        feats = self.features(x, restyle)
        logits = self.classifier(feats["low"], feats["out"])
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., : size[0], : size[1]] if self.is_vit else logits
