"""famix's tiny timm trunks, for tests and smoke runs (random weights only): ``famix_tiny_eva`` and
``famix_tiny_convnext``, the trunks of the packaged ``tiny-eva`` / ``tiny-convnext`` CLIP configs.

Importing this module registers them with timm (``@register_model``); nothing imports it but
``models.clip.build_clip``, just before it builds a config whose ``timm_model_name`` names one (starts with
``towers.TINY_TRUNK_PREFIX``), so importing famix's production modules leaves timm's registry untouched.
"""

from __future__ import annotations

from timm.models import register_model
from timm.models.convnext import ConvNeXt
from timm.models.eva import Eva


def _trunk_kwargs(kwargs: dict) -> dict:
    """timm.create_model's keyword arguments for a registered tiny trunk, less those for its registry
    (``pretrained_cfg``, ``pretrained_cfg_overlay``, ``cache_dir``), which model classes do not take."""
    return {
        k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
    }


@register_model
def famix_tiny_eva(pretrained: bool = False, **kwargs) -> Eva:
    """A tiny EVA02-style trunk (``towers.eva``): 32-px images, 8-px patches, width 32, 4 blocks; EVA02's
    SwiGLU, sub-LayerNorms and RoPE with a 4 x 4 reference grid."""
    if pretrained:
        raise ValueError("famix_tiny_eva has no pretrained weights")
    args = dict(
        img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=4, qkv_fused=False, mlp_ratio=4 * 2 / 3,
        swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4),
    )  # fmt: skip
    model = Eva(**{**args, **_trunk_kwargs(kwargs)})
    model.default_cfg = model.pretrained_cfg = {}
    return model


@register_model
def famix_tiny_convnext(pretrained: bool = False, **kwargs) -> ConvNeXt:
    """A tiny ConvNeXt trunk (``towers.convnext``): depths 1, 1, 2, 2, widths 16, 24, 32, 48."""
    if pretrained:
        raise ValueError("famix_tiny_convnext has no pretrained weights")
    model = ConvNeXt(**{"depths": (1, 1, 2, 2), "dims": (16, 24, 32, 48), **_trunk_kwargs(kwargs)})
    model.default_cfg = model.pretrained_cfg = {}
    return model
