"""CLIP image towers famix can use, one module per family, behind one contract (``base.Tower``).

FAMix styles live in one feature map of the frozen CLIP image tower, the *style site*, and PIN embeds
restyled maps of that site through the rest of the tower, the *style tail*:

- ``resnet`` (CLIP ResNets): layer1 [B, C, H/4, W/4], non-negative, restyled maps take a ReLU; tail
  layer2..layer4 + attention pool on S x S maps, S = input size / 4.
- ``vit`` (CLIP ViTs): the patch embedding conv1(x) [B, W, H/P, W/P] before the positional embeddings,
  signed; tail: the whole transformer on the native grid, S = input size / P.
- ``eva`` (EVA02-CLIP): as a ViT, with EVA's rotary positions (``towers.eva``).
- ``convnext`` (ConvNeXt-CLIP): stage 0's output [B, C0, H/4, W/4], signed; tail stages 1..3 + pooled
  projection, S = input size / 4.

``tower(visual)`` finds a module's family; the functions below ask it. Any other module is a TypeError
naming its type and the families famix takes.
"""

from __future__ import annotations

import torch
from torch import nn

from famix.models.towers.base import Tower
from famix.models.towers.convnext import ConvNextTower
from famix.models.towers.eva import EvaTower
from famix.models.towers.resnet import ResNetTower
from famix.models.towers.vit import ViTTower

FAMILIES: tuple[Tower, ...] = (ResNetTower(), ViTTower(), EvaTower(), ConvNextTower())
# timm names of famix's tiny test trunks (``towers.tiny``, imported only to build a config naming one)
TINY_TRUNK_PREFIX = "famix_tiny_"


def tower(visual: nn.Module) -> Tower:
    """The family of a CLIP image tower module (TypeError for a module of none)."""
    for family in FAMILIES:
        if family.accepts(visual):
            return family
    raise TypeError(
        f"{type(visual).__module__}.{type(visual).__name__} is not a CLIP image tower famix knows: it takes "
        f"{'; '.join(f.describe() for f in FAMILIES)}"
    )


def style_features(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The style-site features of CLIP-normalised images x [B, 3, H, W]: ResNet layer1(stem(x))
    [B, C, H/4, W/4]; ViT / EVA patch embeddings [B, W, H/P, W/P]; ConvNeXt stage 0 [B, C0, H/4, W/4]."""
    return tower(visual).style_features(visual, x)


def style_channels(visual: nn.Module) -> int:
    """The style site's channel count C (a style is C means and C stds)."""
    return tower(visual).style_channels(visual)


def style_grid(visual: nn.Module) -> int:
    """S, the side of the S x S maps the style tail takes (PIN pools restyled patches to it): 56 for RN50
    (224 px / 4), 14 for ViT-B/16 (224 / 16), 80 for convnext_large_d_320 (320 / 4)."""
    return tower(visual).style_grid(visual)


def style_relu(visual: nn.Module) -> bool:
    """Whether restyled features take a ReLU: True for ResNet layer1 (it ends in one); False for the
    signed sites of the other families."""
    return tower(visual).style_relu


def style_tail(visual: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """CLIP's image embedding of style-site maps z [N, C, S, S] -> [N, D] (S = ``style_grid(visual)``)."""
    return tower(visual).tail(visual, z)


def input_size(visual: nn.Module) -> int:
    """The input resolution the image tower was built for (its ``image_size``, an int or a square pair)."""
    return tower(visual).input_size(visual)
