"""The style site of a CLIP image tower and the tail that embeds restyled features, per tower type.

FAMix styles live in one feature map of the frozen CLIP image tower, the *style site*, and PIN embeds
restyled maps of that site through the rest of the tower, the *style tail*:

- CLIP ResNet (open_clip ``ModifiedResNet``: has ``attnpool`` and ``layer1``): the site is layer1,
  f = layer1(stem(x)) [B, C, H/4, W/4], non-negative (it leaves a ReLU), so restyled maps go through a ReLU
  again; the tail is the undilated layer2 -> layer3 -> layer4 -> attention pool, fed S x S maps with
  S = CLIP input size / 4 (56 for RN50).
- CLIP ViT (open_clip ``VisionTransformer``): the site is the patch embedding before the positional
  embeddings, f = conv1(x) [B, W, H/P, W/P], signed, so restyled maps take no ReLU; the tail is tokens ->
  class token prepended -> + positional embedding -> ln_pre -> transformer -> ln_post -> pooled token ->
  @ proj, fed the native S x S grid, S = image size / patch size (14 for 224-px ViT-B/16).

Pure functions dispatching on the tower type; any other tower is a TypeError naming its type.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn

from famix.models.vit import embed_tokens, patch_size


def is_vit(visual: nn.Module) -> bool:
    """True for a CLIP ViT image tower, False for a CLIP ResNet one; TypeError for anything else."""
    if isinstance(visual, VisionTransformer):
        return True
    if hasattr(visual, "attnpool") and hasattr(visual, "layer1"):
        return False
    raise TypeError(
        f"{type(visual).__module__}.{type(visual).__name__} is neither a CLIP ResNet (open_clip "
        "ModifiedResNet) nor a CLIP ViT (open_clip VisionTransformer) image tower: famix cannot find its "
        "style site"
    )


def style_features(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The style-site features of CLIP-normalised images x [B, 3, H, W]: ResNet layer1(stem(x))
    [B, C, H/4, W/4]; ViT conv1(x) [B, W, H/P, W/P] (patch embeddings before the positional ones)."""
    if is_vit(visual):
        return visual.conv1(x)
    return visual.layer1(visual.stem(x))


def style_channels(visual: nn.Module) -> int:
    """The style site's channel count C (a style is C means and C stds): ResNet layer1's, ViT's width."""
    if is_vit(visual):
        return visual.conv1.out_channels
    return visual.layer1[-1].conv3.out_channels


def input_size(visual: nn.Module) -> int:
    """The input resolution the image tower was built for (its ``image_size``, an int or a square pair)."""
    size = visual.image_size
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ValueError(f"CLIP image size {tuple(size)} is not square: famix needs a square input")
        size = size[0]
    return int(size)


def style_grid(visual: nn.Module) -> int:
    """S, the side of the S x S maps the style tail takes (PIN pools restyled patches to it): ResNet input
    size // 4 (56 for RN50, 224 px); ViT input size // patch size (its native token grid, 14 for ViT-B/16)."""
    if is_vit(visual):
        return input_size(visual) // patch_size(visual)
    return input_size(visual) // 4


def style_relu(visual: nn.Module) -> bool:
    """Whether restyled features take a ReLU: True for ResNet layer1 (non-negative, it ends in a ReLU);
    False for ViT patch embeddings (signed: a ReLU would cut half of them)."""
    return not is_vit(visual)


def style_tail(visual: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """CLIP's image embedding of style-site maps z [N, C, S, S] -> [N, D] (S = ``style_grid(visual)``):
    ``resnet_tail`` or ``vit_tail``."""
    return vit_tail(visual, z) if is_vit(visual) else resnet_tail(visual, z)


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
