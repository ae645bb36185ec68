"""The CLIP ResNet image tower as a segmentation backbone: output stride by dilation, stage-wise forward.

The backbone *is* open_clip's ``ModifiedResNet`` (so parameter names match official FAMix checkpoints:
``backbone.layer4.2.conv1.weight``...), with the attention pool replaced by ``nn.Identity`` and strides
turned into dilations. In this network a stride-2 step is an ``AvgPool2d(2)`` in the main branch
(``avgpool``) and in the shortcut (``downsample["-1"]``); neither has weights, so dilating renames nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from famix.models.towers.base import Tower, Unit

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


def resnet_tail(visual: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """layer2 -> layer3 -> layer4 -> attention pool of an undilated CLIP ResNet: [N, C1, S, S] -> [N, D]."""
    return pooled_embedding(visual.attnpool, visual.layer4(visual.layer3(visual.layer2(z))))


def pooled_embedding(attnpool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip's ``AttentionPool2d`` (CLIP ResNet's last layer) computing only the query it keeps.

    x: [N, C, H, W] -> [N, D]. The pool attends from the mean token over [mean, pixels] + positional
    embedding and returns that one token through ``c_proj``; ``attnpool(x)`` computes all H * W + 1 queries
    and drops all but the first. Equal to ``attnpool(x)`` up to float rounding.
    """
    n, c = x.shape[:2]
    heads = attnpool.num_heads
    tokens = x.flatten(2).permute(2, 0, 1)  # [HW, N, C]
    tokens = torch.cat([tokens.mean(0, keepdim=True), tokens])  # [L, N, C], L = HW + 1
    tokens = tokens + attnpool.positional_embedding[:, None].to(tokens.dtype)
    query = F.linear(tokens[:1], attnpool.q_proj.weight, attnpool.q_proj.bias)  # [1, N, C]
    key = F.linear(tokens, attnpool.k_proj.weight, attnpool.k_proj.bias)  # [L, N, C]
    value = F.linear(tokens, attnpool.v_proj.weight, attnpool.v_proj.bias)
    q, k, v = (t.view(len(t), n, heads, c // heads).permute(1, 2, 0, 3) for t in (query, key, value))
    out = F.scaled_dot_product_attention(q, k, v)  # [N, heads, 1, C / heads]
    return attnpool.c_proj(out.reshape(n, c))  # [N, D]


class ResNetTower(Tower):
    """CLIP ResNets (open_clip ``ModifiedResNet``: OpenAI's RN50, RN101, RN50x4...).

    Dense path: stem -> layer1 (the style site and the low-level map, [B, C1, H/4, W/4], non-negative: it
    leaves a ReLU, so restyled maps take one again) -> layer2, layer3 -> layer4 block by block ("out",
    [B, C4, H/OS, W/OS], dilated to the output stride). Tail: undilated layer2 -> layer3 -> layer4 ->
    attention pool (``resnet_tail``), fed S x S maps, S = input size / 4 (56 for RN50). Any input size.
    """

    name, style_site, style_relu, channels_last = "resnet", "layer1", True, True
    clip_names = ("RN50", "RN101", "RN50x4")

    def clip_config(self, name: str) -> str:
        # OpenAI's CLIPs were trained with QuickGELU: a ResNet name means its "-quickgelu" config, the
        # faithful one for OpenAI's weights.
        return f"{name}-quickgelu"

    def accepts(self, visual: nn.Module) -> bool:
        return hasattr(visual, "attnpool") and hasattr(visual, "layer1")

    def describe(self) -> str:
        return "a CLIP ResNet (open_clip ModifiedResNet)"

    def prepare(self, visual: nn.Module, output_stride: int, dilation: str) -> nn.Module:
        return prepare_backbone(visual, output_stride, dilation)

    def units(self, visual: nn.Module, size: tuple[int, int] | None = None) -> list[Unit]:
        return backbone_units(visual)

    def unit_modules(self, visual: nn.Module, name: str) -> list[nn.Module]:
        return unit_modules(visual, name)

    def last_stage(self, names: list[str]) -> list[str]:
        return [n for n in names if n.startswith("layer4.")]

    def low_site(self, visual: nn.Module) -> str:
        return "layer1"

    def channels(self, visual: nn.Module) -> tuple[int, int]:
        return feature_channels(visual)

    def style_features(self, visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return visual.layer1(visual.stem(x))  # [B, C1, H/4, W/4]

    def style_channels(self, visual: nn.Module) -> int:
        return visual.layer1[-1].conv3.out_channels

    def style_grid(self, visual: nn.Module) -> int:
        return self.input_size(visual) // 4

    def tail(self, visual: nn.Module, z: torch.Tensor) -> torch.Tensor:
        return resnet_tail(visual, z)
