"""The FAMix segmenter: a CLIP image tower (any family of ``models.towers``) + DeepLabv3+ head, with a hook
for restyling, and the input normalisation of the tower's weights."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from famix.models.deeplab import DeepLabHeadV3Plus
from famix.models.towers import tower
from famix.models.towers.base import pad_to_multiple
from famix.normalization import OPENAI_NORMALIZATION, Normalization

Restyle = Callable[[torch.Tensor], torch.Tensor]


class SegmentationNetwork(nn.Module):
    """``backbone`` (a CLIP image tower) and ``classifier`` (DeepLabv3+), named as in official FAMix
    checkpoints; token towers (ViT, EVA) add ``neck``, the learned upsampler of their low-level map (always
    trained). ``family`` is the tower's family (``models.towers.base.Tower``), which says how to use it.

    ``forward(x, restyle)`` applies ``restyle`` to the *style map* (``style_features``), which then feeds
    the deep path and, for ResNets and ConvNeXts, the head's low-level branch (FAMix's style mixing point):

    - ResNet (``towers/resnet.py``, dilated to ``output_stride``): the style map is layer1
      [B, C1, H/4, W/4]; it is also the low-level feature; layer2..layer4 make "out" [B, C4, H/OS, W/OS].
    - ViT / EVA (``towers/vit.py``, ``towers/eva.py``, ``output_stride`` = the patch size P): the style map
      is the patch embedding [B, W, H/P, W/P]; "low" is the neck of the tokens after block ceil(L/4)
      [B, W, ~H/4, ~W/4], "out" the last tokens [B, W, H/P, W/P].
    - ConvNeXt (``towers/convnext.py``, output stride 32): the style map is stage 0 [B, C0, H/4, W/4], also
      the low-level feature; "out" is stage 3 [B, C3, H/32, W/32].

    ``forward`` zero-pads inputs (at the bottom and right) to the family's ``pad_multiple`` (P, 32; ResNets
    take any size) and to at least ``min_size`` (the output stride: a 1x1 image too), and crops the logits
    back. Units whose parameters are all frozen run without autograd, and stay in eval mode
    (frozen BatchNorm statistics) whenever the model trains.

    ``normalization``: the (mean, std) per channel of the tower's weights (OpenAI's by default); every
    caller normalises [0, 1] images with it (``engine.inference.model_input``) before ``forward``.
    """

    def __init__(
        self,
        visual: nn.Module,
        num_classes: int,
        output_stride: int = 16,
        dilation: str = "official",
        normalization: tuple[Sequence[float], Sequence[float]] = OPENAI_NORMALIZATION,
    ):
        super().__init__()
        self.family = tower(visual)
        self.backbone = self.family.prepare(visual, output_stride, dilation)
        low, out = self.family.channels(self.backbone)
        self.neck = self.family.neck(self.backbone, output_stride)
        self.classifier = DeepLabHeadV3Plus(low, out, num_classes, output_stride)
        self.num_classes = num_classes
        self.output_stride = output_stride
        # (mean, std) per RGB channel of [0, 1] images: what ``forward``'s inputs are normalised with
        self.normalization = Normalization(*(tuple(float(v) for v in part) for part in normalization))

    @property
    def pad_multiple(self) -> int:
        """Input sides ``forward`` zero-pads to (1: any size as it is)."""
        return self.family.pad_multiple(self.backbone)

    @property
    def min_size(self) -> int:
        """The smallest height and width the backbone computes on, its output stride (every stride-2 step
        then leaves at least one pixel); ``forward`` zero-pads smaller inputs up to it."""
        return self.output_stride

    @property
    def style_channels(self) -> int:
        """Channels of the style map (ResNet layer1's, a ViT's width...): what style banks must match."""
        return self.family.style_channels(self.backbone)

    @property
    def style_relu(self) -> bool:
        """Whether restyled style maps take a ReLU: ResNet layer1 ends in one; the other sites are signed
        and must not be clamped at 0."""
        return self.family.style_relu

    @property
    def style_site(self) -> str:
        """The unit (see ``units``) whose output is the style map restyle applies to."""
        return self.family.style_site

    def style_features(self, x: torch.Tensor) -> torch.Tensor:
        """The map the restyle hook sees, unrestyled, of normalised images x [B, 3, H, W]."""
        return self.family.style_features(self.backbone, x)

    def units(
        self, size: tuple[int, int] | None = None
    ) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        """The backbone as ordered (name, callable) units for inputs of ``size``: ResNet stem,
        layer1..layer3, layer4.i; ViT / EVA patch_embed, embed, block.0..block.{L-1}; ConvNeXt stem,
        stage.0..stage.2, stage.3.j."""
        return self.family.units(self.backbone, size)

    def unit_modules(self, name: str) -> list[nn.Module]:
        """The submodules of one unit (put in eval mode when it is frozen)."""
        return self.family.unit_modules(self.backbone, name)

    def unit_parameters(self, name: str) -> list[nn.Parameter]:
        """The parameters of one unit (what freeze presets switch)."""
        return self.family.unit_parameters(self.backbone, name)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Everything outside the CLIP backbone (a token tower's neck, the DeepLabv3+ head): trained."""
        return (p for n, p in self.named_parameters() if not n.startswith("backbone."))

    def frozen_units(self) -> list[str]:
        """Names of backbone units (see ``units``) with no trainable parameter."""
        return [
            name
            for name in self.family.unit_names(self.backbone)
            if not any(p.requires_grad for p in self.unit_parameters(name))
        ]

    def train(self, mode: bool = True) -> SegmentationNetwork:
        super().train(mode)
        if mode:
            for name in self.frozen_units():
                for m in self.unit_modules(name):
                    m.eval()
        return self

    def features(self, x: torch.Tensor, restyle: Restyle | None = None) -> dict[str, torch.Tensor]:
        """x: [B, 3, H, W] -> {"low": [B, C_low, ~H/4, ~W/4], "out": [B, C_out, H/OS, W/OS]}; ``restyle``
        applies to the style map (see the class docstring). Sides must be multiples of ``pad_multiple``
        (``forward`` pads them)."""
        # (not while TorchScript traces: exported models take multiples only, see stages/export.py)
        m = self.pad_multiple
        if m > 1 and not torch.jit.is_tracing() and (x.shape[-2] % m or x.shape[-1] % m):
            raise ValueError(
                f"a {self.family.name} segmenter's features need sides that are multiples of {m}, got "
                f"{x.shape[-2]}x{x.shape[-1]} (forward pads them)"
            )
        style_site, low_site = self.style_site, self.family.low_site(self.backbone)
        frozen = set(self.frozen_units())
        grad = torch.is_grad_enabled()
        low = grid = None
        for name, unit in self.units(tuple(x.shape[-2:])):
            with torch.set_grad_enabled(grad and name not in frozen):
                x = unit(x)
            if name == style_site:
                if restyle is not None:
                    x = restyle(x)
                grid = x.shape[-2:]
            if name == low_site:
                low = x
        low, out = self.family.dense(self.backbone, low, x, grid)
        return {"low": low if self.neck is None else self.neck(low), "out": out}

    def pad(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """x [B, 3, H, W] as ``forward`` computes on it: zero-padded (bottom, right) to multiples of
        ``pad_multiple`` and at least ``min_size`` per side; and whether its logits are cropped back."""
        m, least = self.pad_multiple, self.min_size
        crop = m > 1
        if not torch.jit.is_tracing():  # traced (exported) models take multiples of m, at least min_size
            if m > 1:
                x = pad_to_multiple(x, m)
            if x.shape[-2] < least or x.shape[-1] < least:  # e.g. a 1x1 image: zero-padded as above
                x = F.pad(x, (0, max(least - x.shape[-1], 0), 0, max(least - x.shape[-2], 0)))
                crop = True
        return x, crop

    def forward(self, x: torch.Tensor, restyle: Restyle | None = None) -> torch.Tensor:
        """x: [B, 3, H, W] normalised with ``normalization`` -> logits [B, K, H, W]."""
        size = x.shape[-2:]
        x, crop = self.pad(x)
        feats = self.features(x, restyle)
        logits = self.classifier(feats["low"], feats["out"])
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., : size[0], : size[1]] if crop else logits
