"""ConvNeXt-CLIP image towers (open_clip ``TimmModel`` around a timm ``ConvNeXt`` trunk) as dense backbones.

open_clip builds LAION's ConvNeXt CLIPs (``convnext_base_w``, ``convnext_large_d``, ``convnext_large_d_320``,
``convnext_xxlarge``...) as a ``TimmModel`` whose ``trunk`` is timm's ``ConvNeXt`` (classifier removed) and
whose ``head`` is the CLIP projection (linear or MLP) after the trunk's pooled, LayerNorm'ed features.
Parameter names stay the tower's (``backbone.trunk.stages.3.blocks.2.conv_dw.weight``...). Dense forward of
images [B, 3, H, W] (H, W multiples of 32, zero-padded to them):

    trunk.stem (4x4 conv, stride 4, LayerNorm) -> stage 0   -> style map [B, C0, H/4, W/4]
                                                               (FAMix restyles it here: signed, no ReLU;
                                                               it is also the low-level map)
    stage 1 (stride 8), stage 2 (stride 16)
    stage 3 (stride 32): "stage.3.0" = its downsampling + first block, then one unit per block
                                                            -> "out" [B, C3, H/32, W/32]

Output stride 32, the trunk's own: dilating ConvNeXt's 2x2 patchify downsampling would shift the grid
(famix does not), so the head's ASPP runs at 1/32 and the low-level branch at 1/4. The tail for PIN takes
S x S style maps, S = image size / 4 (80 for convnext_large_d_320): stages 1..3 -> norm_pre -> the trunk's
head (average pool, LayerNorm) -> open_clip's projection, exactly ``visual(x)`` when fed stage 0's output.
"""

from __future__ import annotations

import functools

import torch
from open_clip.timm_model import TimmModel
from timm.models.convnext import ConvNeXt
from torch import nn

from famix.models.towers.base import Tower, Unit, check_stride

STRIDE = 32  # the trunk's total downsampling, its only output stride


def _stage(stage: nn.Module, block: int | None, x: torch.Tensor) -> torch.Tensor:
    """A stage (``block`` None), or its ``block``-th block (block 0 after the stage's downsampling)."""
    if block is None:
        return stage(x)
    if block == 0:
        x = stage.downsample(x)
    return stage.blocks[block](x)


def _last_block(trunk: ConvNeXt, x: torch.Tensor) -> torch.Tensor:
    return trunk.norm_pre(_stage(trunk.stages[-1], len(trunk.stages[-1].blocks) - 1, x))


class ConvNextTower(Tower):
    """ConvNeXt-CLIP towers; see the module docstring."""

    name, style_site, style_relu = "convnext", "stage.0", False
    clip_names = (
        "convnext_base_w",
        "convnext_base_w_320",
        "convnext_large_d",
        "convnext_large_d_320",
        "convnext_xxlarge",
    )

    def accepts(self, visual: nn.Module) -> bool:
        return isinstance(visual, TimmModel) and isinstance(visual.trunk, ConvNeXt)

    def describe(self) -> str:
        return "a ConvNeXt-CLIP (open_clip TimmModel with a timm ConvNeXt trunk)"

    def prepare(self, visual: nn.Module, output_stride: int, dilation: str) -> nn.Module:
        trunk = visual.trunk
        if len(trunk.stages) != 4 or [f["reduction"] for f in trunk.feature_info] != [4, 8, 16, 32]:
            raise ValueError("famix takes ConvNeXt trunks with four stages at strides 4, 8, 16, 32")
        check_stride(output_stride, STRIDE, "a ConvNeXt tower: famix runs it at its own output stride")
        for module in (trunk.head, visual.head):  # the pooled CLIP projection: unused densely
            module.requires_grad_(False)
        return visual

    def units(self, visual: nn.Module, size: tuple[int, int] | None = None) -> list[Unit]:
        trunk = visual.trunk
        units: list[Unit] = [("stem", trunk.stem)]
        units += [(f"stage.{i}", functools.partial(_stage, trunk.stages[i], None)) for i in range(3)]
        last = trunk.stages[3]
        units += [(f"stage.3.{j}", functools.partial(_stage, last, j)) for j in range(len(last.blocks) - 1)]
        return units + [(f"stage.3.{len(last.blocks) - 1}", functools.partial(_last_block, trunk))]

    def unit_modules(self, visual: nn.Module, name: str) -> list[nn.Module]:
        trunk = visual.trunk
        if name == "stem":
            return [trunk.stem]
        parts = name.split(".")
        if len(parts) == 2:
            return [trunk.stages[int(parts[1])]]
        last, j = trunk.stages[3], int(parts[2])
        return (
            [last.blocks[j]]
            + ([last.downsample] if j == 0 else [])
            + ([trunk.norm_pre] if j == len(last.blocks) - 1 else [])
        )

    def last_stage(self, names: list[str]) -> list[str]:
        return [n for n in names if n.startswith("stage.3.")]

    def low_site(self, visual: nn.Module) -> str:
        return "stage.0"

    def channels(self, visual: nn.Module) -> tuple[int, int]:
        info = visual.trunk.feature_info
        return info[0]["num_chs"], info[-1]["num_chs"]

    def pad_multiple(self, visual: nn.Module) -> int:
        return STRIDE

    def style_features(self, visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return visual.trunk.stages[0](visual.trunk.stem(x))  # [B, C0, H/4, W/4]

    def style_channels(self, visual: nn.Module) -> int:
        return visual.trunk.feature_info[0]["num_chs"]

    def style_grid(self, visual: nn.Module) -> int:
        return self.input_size(visual) // 4

    def tail(self, visual: nn.Module, z: torch.Tensor) -> torch.Tensor:
        trunk = visual.trunk
        for stage in trunk.stages[1:]:
            z = stage(z)
        return visual.head(trunk.forward_head(trunk.norm_pre(z)))  # [N, D]
