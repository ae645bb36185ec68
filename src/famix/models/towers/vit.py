"""The CLIP ViT image tower as a dense segmentation backbone: token maps at any size, block-wise units.

The backbone *is* open_clip's ``VisionTransformer``, used in place, so CLIP state dicts map directly
(``backbone.conv1.weight``, ``backbone.class_embedding``, ``backbone.positional_embedding``,
``backbone.ln_pre.*``, ``backbone.transformer.resblocks.N.*``, ``backbone.ln_post.*``, ``backbone.proj``).
Dense forward of images [B, 3, H, W] (H, W multiples of the patch size P):

    conv1 (patch embedding, stride P)       -> style map [B, W, H/P, W/P]  (FAMix restyles it here)
    flatten, class token, + positional embedding (grid bicubically resized to H/P x W/P), ln_pre
                                            -> tokens [B, 1 + HW/P^2, W]
    transformer blocks (one unit each)      -> tokens; the last block's unit also applies ln_post
    class token dropped                     -> "out" map [B, W, H/P, W/P]  (output stride P)

Patch dropout is never applied (eval semantics). ``proj`` (CLIP's embedding projection) is unused.

Low-level features for the DeepLabv3+ head: the tokens after block ceil(L/4) (1-based; e.g. block 3 of
ViT-B/16's 12, 6 of ViT-L/14's 24), as a map at stride P, brought to stride ~4 by a learned ``neck``
(round(log2(P / 4)) ConvTranspose2d(k=2, s=2) + BatchNorm + ReLU steps keeping the width W; stride 4
exactly for P = 8, 16, 32; 3.5 for P = 14).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn

from famix.models.towers.base import Tower, Unit, check_stride


def patch_size(visual: VisionTransformer) -> int:
    """P of a ViT with square P x P patches (ValueError otherwise)."""
    p = visual.patch_size
    p = tuple(p) if isinstance(p, (tuple, list)) else (p, p)
    if p[0] != p[1]:
        raise ValueError(f"ViT patch size {p} is not square: famix needs square patches")
    return int(p[0])


def interpolate_pos_embed(
    pos: torch.Tensor, grid_hw: tuple[int, int], native_hw: tuple[int, int] | None = None
) -> torch.Tensor:
    """Positional embedding for an h x w token grid.

    pos: [1 + gh * gw, W] (class position first, then the gh x gw grid row-major); native_hw = (gh, gw),
    default a square grid. Returns [1 + h * w, W]: the class position unchanged, the grid resized
    bicubically (align_corners=False, antialias=False). At the native size this is the identity, bit for
    bit (bicubic at scale 1 samples the grid points with weights 0, 1, 0, 0), so no branch is needed.
    """
    cls, grid = pos[:1], pos[1:]
    if native_hw is None:
        side = math.isqrt(grid.shape[0])
        if side * side != grid.shape[0]:
            raise ValueError(f"{grid.shape[0]} grid positions are not a square grid: pass native_hw")
        native_hw = (side, side)
    gh, gw = native_hw
    grid = grid.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)  # [1, W, gh, gw]
    grid = F.interpolate(grid, size=tuple(grid_hw), mode="bicubic", align_corners=False, antialias=False)
    return torch.cat([cls, grid.flatten(2)[0].t()])  # [1 + h * w, W]


def embed_tokens(visual: VisionTransformer, z: torch.Tensor) -> torch.Tensor:
    """Style map z [B, W, h, w] (conv1's output, maybe restyled) -> tokens [B, 1 + h * w, W]: class token
    prepended, positional embedding (resized to h x w) added, ln_pre. No patch dropout."""
    b, c, h, w = z.shape
    tokens = z.flatten(2).transpose(1, 2)  # [B, h * w, W]
    cls = visual.class_embedding.to(tokens.dtype).expand(b, 1, c)
    pos = interpolate_pos_embed(visual.positional_embedding, (h, w), tuple(visual.grid_size))
    return visual.ln_pre(torch.cat([cls, tokens], dim=1) + pos.to(tokens.dtype))


def tokens_to_map(tokens: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Tokens [B, 1 + h * w, W] -> map [B, W, h, w], the class token dropped."""
    return tokens[:, 1:].transpose(1, 2).unflatten(2, tuple(grid_hw))


def low_level_block(layers: int) -> int:
    """0-based index of the block whose output feeds the head's low-level branch: block ceil(L/4) 1-based,
    the ViT counterpart of ResNet's layer1 (a quarter of the way in)."""
    return math.ceil(layers / 4) - 1


def neck_steps(patch: int) -> int:
    """How many x2 upsampling steps bring stride ``patch`` to about 4: round(log2(P / 4))."""
    if patch < 4:
        raise ValueError(f"ViT patch size {patch} < 4: famix's low-level map needs a stride of 4 or more")
    return round(math.log2(patch / 4))


def build_neck(channels: int, patch: int) -> nn.Sequential:
    """The learned upsampler of the low-level map: [B, W, H/P, W/P] -> [B, W, H/P * 2^n, W/P * 2^n],
    n = ``neck_steps(P)`` steps of ConvTranspose2d(k=2, s=2) + BatchNorm + ReLU (none for P = 4)."""
    return nn.Sequential(
        *[
            nn.Sequential(
                nn.ConvTranspose2d(channels, channels, 2, stride=2, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )
            for _ in range(neck_steps(patch))
        ]
    )


def prepare_vit(visual: nn.Module, output_stride: int) -> VisionTransformer:
    """Check an open_clip ``VisionTransformer`` can serve as a dense backbone at ``output_stride`` and freeze
    its unused ``proj``. Nothing is replaced or renamed. Returns the same module.
    """
    if not isinstance(visual, VisionTransformer):
        raise TypeError(f"expected an open_clip VisionTransformer image tower, got {type(visual).__name__}")
    if visual.attn_pool is not None:
        raise ValueError("ViT towers with an attentional pool (CoCa-style) are not supported")
    if not getattr(visual.transformer, "batch_first", False):
        raise ValueError("this open_clip's ViT runs sequence-first: famix needs a newer open_clip_torch")
    p = patch_size(visual)
    check_stride(output_stride, p, "this ViT: its output stride is its patch size")
    neck_steps(p)  # P < 4 fails here, before anything is built
    if visual.proj is not None:
        visual.proj.requires_grad_(False)  # the dense path never uses it (DDP would flag it unused)
    return visual


def _last_block(visual: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    return visual.ln_post(visual.transformer.resblocks[-1](tokens))


def vit_units(visual: VisionTransformer) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """The dense ViT as an ordered list of (name, callable):

    "patch_embed" images -> style map [B, W, h, w]; "embed" style map -> tokens [B, 1 + h * w, W];
    "block.0" .. "block.{L-1}" tokens -> tokens (the last one followed by ln_post).
    """
    blocks = visual.transformer.resblocks
    units: list[tuple[str, Callable]] = [
        ("patch_embed", visual.conv1),
        ("embed", functools.partial(embed_tokens, visual)),
    ]
    units += [(f"block.{i}", block) for i, block in enumerate(blocks[:-1])]
    units.append((f"block.{len(blocks) - 1}", functools.partial(_last_block, visual)))
    return units


def vit_unit_modules(visual: VisionTransformer, name: str) -> list[nn.Module]:
    """The submodules of one unit of ``vit_units`` (put in eval mode when the unit is frozen)."""
    if name == "patch_embed":
        return [visual.conv1]
    if name == "embed":
        return [visual.ln_pre]
    index = int(name.removeprefix("block."))
    last = index == len(visual.transformer.resblocks) - 1
    return [visual.transformer.resblocks[index]] + ([visual.ln_post] if last else [])


def vit_unit_parameters(visual: VisionTransformer, name: str) -> list[nn.Parameter]:
    """The parameters of one unit of ``vit_units`` ("embed" adds the class and positional embeddings)."""
    params = [p for m in vit_unit_modules(visual, name) for p in m.parameters()]
    if name == "embed":
        params += [visual.class_embedding, visual.positional_embedding]
    return params


def vit_tail(visual: VisionTransformer, z: torch.Tensor) -> torch.Tensor:
    """A CLIP ViT from its patch embeddings on: z [N, W, S, S] -> [N, D], S the native grid.

    tokens [N, S * S, W] -> class embedding prepended -> + positional embedding -> ln_pre -> transformer ->
    pooled token (the class token, or the patch tokens' mean for ``pool_type="avg"``) with ln_post before
    or after pooling as the tower does -> @ proj. Equal to ``visual(x)`` when z = ``visual.conv1(x)`` at the
    native size (an eval tower: patch dropout is off). Attentional-pool towers (CoCa) are not CLIP ViTs:
    ValueError.
    """
    if visual.attn_pool is not None or visual.pool_type not in ("tok", "avg"):
        raise ValueError(
            "famix embeds restyled patches through a CLIP ViT's class-token (or average) pool; this tower "
            "has an attentional pool (CoCa-style), which famix does not support"
        )
    h, wd = z.shape[-2:]
    if (h, wd) != tuple(visual.grid_size):
        raise ValueError(
            f"the ViT tail takes the native {visual.grid_size[0]}x{visual.grid_size[1]} token grid (its "
            f"positional embedding's), got {h}x{wd} maps: pool them to style_grid(visual) first"
        )
    x = visual.transformer(embed_tokens(visual, z))  # [N, L, W], L = 1 + S * S
    if visual.final_ln_after_pool:
        pooled = visual.ln_post(x[:, 0] if visual.pool_type == "tok" else x[:, 1:].mean(1))
    else:
        x = visual.ln_post(x)
        pooled = x[:, 0] if visual.pool_type == "tok" else x[:, 1:].mean(1)
    return pooled if visual.proj is None else pooled @ visual.proj  # [N, D]


def last_quarter(names: list[str]) -> list[str]:
    """A token tower's counterpart of ResNet's last stage: its last ceil(L/4) ``block.*`` units."""
    blocks = [n for n in names if n.startswith("block.")]
    return blocks[-math.ceil(len(blocks) / 4) :]


class TokenTower(Tower):
    """What every token tower (CLIP ViT, EVA02) shares: the style site is the patch embedding [B, W, H/P,
    W/P] (signed: no ReLU); the dense maps are the tokens, class token dropped, at stride P, the low-level
    one after block ceil(L/4) through a learned ``neck``; ``layer4`` trains the last quarter of the blocks;
    inputs are padded to multiples of P. A family says its ``width`` W, ``patch`` P and ``depth`` L."""

    style_site, style_relu = "patch_embed", False

    def width(self, visual: nn.Module) -> int:
        raise NotImplementedError

    def patch(self, visual: nn.Module) -> int:
        raise NotImplementedError

    def depth(self, visual: nn.Module) -> int:
        raise NotImplementedError

    def last_stage(self, names: list[str]) -> list[str]:
        return last_quarter(names)

    def low_site(self, visual: nn.Module) -> str:
        return f"block.{low_level_block(self.depth(visual))}"

    def channels(self, visual: nn.Module) -> tuple[int, int]:
        return self.width(visual), self.width(visual)

    def neck(self, visual: nn.Module, output_stride: int) -> nn.Module:
        return build_neck(self.width(visual), output_stride)

    def dense(
        self, visual: nn.Module, low: torch.Tensor, out: torch.Tensor, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return tokens_to_map(low, grid), tokens_to_map(out, grid)

    def pad_multiple(self, visual: nn.Module) -> int:
        return self.patch(visual)

    def style_channels(self, visual: nn.Module) -> int:
        return self.width(visual)

    def style_grid(self, visual: nn.Module) -> int:
        return self.input_size(visual) // self.patch(visual)


class ViTTower(TokenTower):
    """CLIP ViTs (open_clip ``VisionTransformer``: OpenAI's ViT-B/16, ViT-L/14, open_clip's LAION ones).

    See the module docstring: the style site is the patch embedding conv1(x) [B, W, H/P, W/P] before the
    positional embeddings (signed: no ReLU); the tail (``vit_tail``) takes the native grid, S = image size
    / P (14 for 224-px ViT-B/16). Inputs are zero-padded to multiples of P.
    """

    name = "vit"
    # The plain names are open_clip's GELU configs (for other weights); the "-quickgelu" ones are faithful to
    # OpenAI's weights, trained with QuickGELU.
    clip_names = ("ViT-B-16", "ViT-B-16-quickgelu", "ViT-L-14", "ViT-L-14-quickgelu")

    def accepts(self, visual: nn.Module) -> bool:
        return isinstance(visual, VisionTransformer)

    def describe(self) -> str:
        return "a CLIP ViT (open_clip VisionTransformer)"

    def prepare(self, visual: nn.Module, output_stride: int, dilation: str) -> nn.Module:
        return prepare_vit(visual, output_stride)

    def units(self, visual: nn.Module, size: tuple[int, int] | None = None) -> list[Unit]:
        return vit_units(visual)

    def unit_modules(self, visual: nn.Module, name: str) -> list[nn.Module]:
        return vit_unit_modules(visual, name)

    def unit_parameters(self, visual: nn.Module, name: str) -> list[nn.Parameter]:
        return vit_unit_parameters(visual, name)

    def width(self, visual: nn.Module) -> int:
        return visual.conv1.out_channels

    def patch(self, visual: nn.Module) -> int:
        return patch_size(visual)

    def depth(self, visual: nn.Module) -> int:
        return len(visual.transformer.resblocks)

    def style_features(self, visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return visual.conv1(x)  # [B, W, H/P, W/P]

    def tail(self, visual: nn.Module, z: torch.Tensor) -> torch.Tensor:
        return vit_tail(visual, z)
