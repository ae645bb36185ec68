"""The CLIP ResNet image tower as a segmentation backbone: output stride by dilation, stage-wise forward.

The backbone *is* open_clip's ``ModifiedResNet`` (so parameter names match official FAMix checkpoints:
``backbone.layer4.2.conv1.weight``...), with the attention pool replaced by ``nn.Identity`` and strides
turned into dilations. In this network a stride-2 step is an ``AvgPool2d(2)`` in the main branch
(``avgpool``) and in the shortcut (``downsample["-1"]``); neither has weights, so dilating renames nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# Dilation patterns. "official" reproduces the FAMix release (its checkpoints were trained with it):
# block 0 keeps dilation 1, middle blocks the previous layer's dilation, the last block the new one.
# "torchvision" is torchvision's replace_stride_with_dilation: block 0 the previous, the rest the new.
DILATION_PATTERNS = ("official", "torchvision")
_DILATED_LAYERS = {32: (), 16: (4,), 8: (3, 4)}


def dilation_pattern(blocks: list[int], output_stride: int, pattern: str = "official") -> list[list[int]]:
    """Per-block conv2 dilation of layer1..layer4 for an output stride.

    Args:
        blocks: number of bottleneck blocks per layer, e.g. [3, 4, 6, 3] for RN50.
        output_stride: 32 (CLIP as trained), 16 or 8.
        pattern: "official" or "torchvision" (see module comment).
    Returns: four lists with one dilation per block.
    """
    if output_stride not in _DILATED_LAYERS:
        raise ValueError(f"output_stride must be one of {sorted(_DILATED_LAYERS)}, got {output_stride}")
    if pattern not in DILATION_PATTERNS:
        raise ValueError(f"dilation pattern must be one of {DILATION_PATTERNS}, got {pattern!r}")
    result, current = [], 1
    for layer, n in enumerate(blocks, start=1):
        if layer not in _DILATED_LAYERS[output_stride]:
            result.append([current] * n)
            continue
        previous, current = current, current * 2
        if pattern == "official":
            result.append([1] + [previous] * max(n - 2, 0) + ([current] if n > 1 else []))
        else:
            result.append([previous] + [current] * (n - 1))
    return result


def dilated_layers(output_stride: int) -> tuple[int, ...]:
    """The layers (1-based) whose stride is replaced by dilation."""
    return _DILATED_LAYERS[output_stride]


def prepare_backbone(visual: nn.Module, output_stride: int = 16, pattern: str = "official") -> nn.Module:
    """Turn an open_clip ``ModifiedResNet`` into a segmentation backbone, in place.

    The attention pool becomes ``nn.Identity`` (no parameters, as in official checkpoints) and layers are
    dilated for ``output_stride``. Returns the same module.
    """
    if not hasattr(visual, "layer4") or not hasattr(visual, "attnpool"):
        raise TypeError(f"expected an open_clip ModifiedResNet image tower, got {type(visual).__name__}")
    visual.attnpool = nn.Identity()
    layers = [visual.layer1, visual.layer2, visual.layer3, visual.layer4]
    plan = dilation_pattern([len(layer) for layer in layers], output_stride, pattern)
    for index, (layer, dilations) in enumerate(zip(layers, plan, strict=True), start=1):
        if index in dilated_layers(output_stride):
            first = layer[0]
            first.avgpool = nn.Identity()
            if first.downsample is not None:
                first.downsample[0] = nn.Identity()  # the "-1" AvgPool2d; Sequential indexes by position
            first.stride = 1
        for block, d in zip(layer, dilations, strict=True):
            block.conv2.dilation = (d, d)
            block.conv2.padding = (d, d)
    return visual


def backbone_units(visual: nn.Module) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """The backbone as an ordered list of (name, callable): stem, layer1..layer3, then each layer4 block.

    Splitting layer4 into blocks lets the segmenter run every frozen unit without autograd.
    """
    units: list[tuple[str, Callable]] = [("stem", visual.stem)]
    units += [(f"layer{i}", getattr(visual, f"layer{i}")) for i in (1, 2, 3)]
    units += [(f"layer4.{i}", block) for i, block in enumerate(visual.layer4)]
    return units


def unit_modules(visual: nn.Module, name: str) -> list[nn.Module]:
    """The modules holding the parameters of one unit from ``backbone_units``."""
    if name == "stem":
        return [getattr(visual, n) for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")]
    if name.startswith("layer4."):
        return [visual.layer4[int(name.split(".")[1])]]
    return [getattr(visual, name)]


def feature_channels(visual: nn.Module) -> tuple[int, int]:
    """(low, out) channel counts: layer1 and layer4 outputs."""
    return visual.layer1[-1].conv3.out_channels, visual.layer4[-1].conv3.out_channels
