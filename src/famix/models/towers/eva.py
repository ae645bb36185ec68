"""EVA02-CLIP image towers (open_clip ``TimmModel`` around a timm ``Eva`` trunk) as dense backbones.

open_clip builds EVA02-CLIP (``EVA02-B-16``, ``EVA02-L-14``, ``EVA02-L-14-336``, ``EVA02-E-14``...) as a
``TimmModel`` whose ``trunk`` is timm's ``Eva``: a ViT with a class token, an absolute positional
embedding *and* 2-D rotary position embeddings (RoPE) in every attention, SwiGLU MLPs and sub-LayerNorms
(EVA02-E-14: no RoPE, post-norm blocks).
Parameter names stay the tower's (``backbone.trunk.blocks.N.attn.q_proj.weight``...). Dense forward of
images [B, 3, H, W] (H, W multiples of the patch size P, grid h x w = H/P x W/P):

    trunk.patch_embed.proj (stride P)        -> style map [B, W, h, w]  (FAMix restyles it here: signed)
    flatten, patch_embed.norm, class token, + positional embedding, norm_pre
                                             -> tokens [B, 1 + h * w, W]
    trunk.blocks (one unit each), RoPE of the h x w grid; the last unit also applies trunk.norm
    class token dropped                      -> "out" map [B, W, h, w]  (output stride P)

Positions at other sizes than the native grid (g x g, g = image size / P):

- the absolute embedding's grid is resized by timm's ``resample_abs_pos_embed`` (bicubic, antialiased,
  the class position kept; the identity at the native grid);
- RoPE is evaluated at the new grid's token coordinates rescaled to the reference grid the trunk was
  trained with (EVA02's ``ref_feat_shape``, e.g. 16 x 16): coordinate t_i = i * ref / n on an axis of n
  tokens (+ the trunk's grid offset), angles t_i * band_k for the trunk's frequency bands; at the native
  grid the trunk's own cached table is used.

Both are timm's own rule for an Eva built with ``dynamic_img_size=True`` (tests/test_towers.py checks the
dense tokens against such a trunk at several sizes).

The tail for PIN takes the native grid: embed -> blocks -> norm -> class token -> fc_norm -> trunk.head
(the CLIP projection) -> open_clip's head: exactly ``visual(x)`` when fed ``patch_embed.proj(x)``.
Patch dropout, RoPE coordinate augmentation and drop path are never applied to frozen units (eval mode).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from open_clip.timm_model import TimmModel
from timm.layers import resample_abs_pos_embed
from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, build_rotary_pos_embed
from timm.models.eva import Eva
from torch import nn

from famix.models.towers.base import Unit, check_stride
from famix.models.towers.vit import TokenTower, neck_steps


def eva_patch(trunk: Eva) -> int:
    """P of an Eva trunk with square P x P patches."""
    p = tuple(trunk.patch_embed.patch_size)
    if p[0] != p[1]:
        raise ValueError(f"EVA patch size {p} is not square: famix needs square patches")
    return int(p[0])


def rope_table(rope: RotaryEmbeddingCat | None, grid: tuple[int, int]) -> torch.Tensor | None:
    """The trunk's RoPE sin/cos table for an h x w token grid: [h * w, 2 * D] (D = 4 * bands), the trunk's
    cached table at its native grid, else evaluated at coordinates rescaled to its reference grid; None for
    a trunk without RoPE (EVA02-E: absolute positions only)."""
    if rope is None:
        return None
    if tuple(grid) == tuple(rope.feat_shape):
        return rope.get_embed()
    sin, cos = build_rotary_pos_embed(
        list(grid),
        bands=rope.bands,
        in_pixels=rope.in_pixels,
        ref_feat_shape=rope.ref_feat_shape,
        grid_offset=rope.grid_offset,
        grid_indexing=rope.grid_indexing,
        rotate_half=rope.rotate_half,
        grid_type=rope.grid_type,
        device=rope.bands.device,  # on the trunk's device: no host tensor in the forward
        dtype=rope.pos_embed.dtype,
    )
    return torch.cat([sin, cos], -1)


def embed_tokens(trunk: Eva, z: torch.Tensor) -> torch.Tensor:
    """Style map z [B, W, h, w] -> tokens [B, 1 + h * w, W]: patch_embed.norm, class token, positional
    embedding (resized to h x w, see the module docstring), norm_pre."""
    b, c, h, w = z.shape
    tokens = trunk.patch_embed.norm(z.flatten(2).transpose(1, 2))  # [B, h * w, W]
    cls = trunk.cls_token.to(tokens.dtype).expand(b, -1, -1)
    pos = resample_abs_pos_embed(
        trunk.pos_embed, [h, w], list(trunk.patch_embed.grid_size), num_prefix_tokens=1
    )
    return trunk.norm_pre(trunk.pos_drop(torch.cat([cls, tokens], dim=1) + pos.to(tokens.dtype)))


def _block(trunk: Eva, index: int, table: Callable[[], torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    tokens = trunk.blocks[index](tokens, rope=table())
    return trunk.norm(tokens) if index == len(trunk.blocks) - 1 else tokens


class EvaTower(TokenTower):
    """EVA02-CLIP towers; see the module docstring."""

    name = "eva"
    clip_names = ("EVA02-B-16", "EVA02-L-14", "EVA02-L-14-336", "EVA02-E-14", "EVA02-E-14-plus")

    def accepts(self, visual: nn.Module) -> bool:
        return isinstance(visual, TimmModel) and isinstance(visual.trunk, Eva)

    def describe(self) -> str:
        return "an EVA02-CLIP (open_clip TimmModel with a timm Eva trunk)"

    def prepare(self, visual: nn.Module, output_stride: int, dilation: str) -> nn.Module:
        trunk = visual.trunk
        if trunk.reg_token is not None or trunk.cls_token is None or trunk.no_embed_class:
            raise ValueError("famix takes EVA trunks with one class token and positions for it (EVA02-CLIP)")
        rope = trunk.rope
        if rope is not None and (not isinstance(rope, RotaryEmbeddingCat) or rope.feat_shape is None):
            raise ValueError("famix takes EVA trunks with a fixed-grid 'cat' RoPE (EVA02-CLIP's) or none")
        if trunk.pos_embed is None or trunk.global_pool != "token":
            raise ValueError(
                "famix takes EVA trunks with an absolute position embedding and a class-token pool"
            )
        p = eva_patch(trunk)
        check_stride(output_stride, p, "this EVA tower: its output stride is its patch size")
        neck_steps(p)
        for module in (trunk.fc_norm, trunk.head, visual.head):  # the CLIP projection: unused densely
            module.requires_grad_(False)
        return visual

    def units(self, visual: nn.Module, size: tuple[int, int] | None = None) -> list[Unit]:
        trunk = visual.trunk
        p = eva_patch(trunk)
        grid = tuple(trunk.patch_embed.grid_size) if size is None else (-(-size[0] // p), -(-size[1] // p))
        units: list[Unit] = [
            ("patch_embed", trunk.patch_embed.proj),
            ("embed", functools.partial(embed_tokens, trunk)),
        ]
        table = functools.cache(functools.partial(rope_table, trunk.rope, grid))  # once per forward, if used
        return units + [
            (f"block.{i}", functools.partial(_block, trunk, i, table)) for i in range(len(trunk.blocks))
        ]

    def unit_modules(self, visual: nn.Module, name: str) -> list[nn.Module]:
        trunk = visual.trunk
        if name == "patch_embed":
            return [trunk.patch_embed.proj]
        if name == "embed":
            return [trunk.patch_embed.norm, trunk.norm_pre]
        index = int(name.removeprefix("block."))
        return [trunk.blocks[index]] + ([trunk.norm] if index == len(trunk.blocks) - 1 else [])

    def unit_parameters(self, visual: nn.Module, name: str) -> list[nn.Parameter]:
        params = [p for m in self.unit_modules(visual, name) for p in m.parameters()]
        if name == "embed":
            params += [visual.trunk.cls_token, visual.trunk.pos_embed]
        return params

    def width(self, visual: nn.Module) -> int:
        return visual.trunk.embed_dim

    def patch(self, visual: nn.Module) -> int:
        return eva_patch(visual.trunk)

    def depth(self, visual: nn.Module) -> int:
        return len(visual.trunk.blocks)

    def style_features(self, visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return visual.trunk.patch_embed.proj(x)  # [B, W, H/P, W/P]

    def tail(self, visual: nn.Module, z: torch.Tensor) -> torch.Tensor:
        trunk = visual.trunk
        grid = tuple(trunk.patch_embed.grid_size)
        if tuple(z.shape[-2:]) != grid:
            raise ValueError(
                f"the EVA tail takes the native {grid[0]}x{grid[1]} token grid, got {z.shape[-2]}x"
                f"{z.shape[-1]} maps: pool them to style_grid(visual) first"
            )
        x, table = embed_tokens(trunk, z), functools.partial(rope_table, trunk.rope, grid)  # the cached table
        for i in range(len(trunk.blocks)):
            x = _block(trunk, i, table, x)
        return visual.head(trunk.forward_head(x))  # [N, D]
