"""Image-level PIN (PODA, ICCV 2023): one target style per source image, driven by a domain description.

PODA ("Prompt-driven zero-shot domain adaptation") mines, for each source image, the channel statistics
(mu*, sigma*) of its *whole* style-site feature map (``famix.models.towers``: a CLIP ResNet's layer1, a
CLIP ViT's patch embeddings) that make CLIP embed the restyled map near the text of an unseen target
domain ("driving at night"). It is FAMix's PIN (``famix.style.pin``) with one patch per image (grid 1) and
one prompt for all images, so the optimisation itself is ``pin_optimize``.

Optimiser: SGD, momentum 0.9, weight decay 1e-4, 100 steps, as FAMix's mining; the loss is summed over
images with a per-image lr (default 0.1, famix's per-patch default), so an image's style never depends on
the batch it shares. PODA's own optimiser settings could not be checked offline when this was written;
these are famix's, not a claim about PODA's.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import open_clip
import torch
from torch import nn

from famix.style.pin import PIN_LR, PIN_MOMENTUM, PIN_STEPS, PIN_WEIGHT_DECAY, PinSGD, pin_optimize
from famix.style.stats import patch_stats


class ImageStyles(NamedTuple):
    """Mined image-level styles: mu, sigma [B, C] (fp32); cos [B] the final cosine similarity of each
    restyled image's CLIP embedding to the target text."""

    mu: torch.Tensor
    sigma: torch.Tensor
    cos: torch.Tensor


def image_stats(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel mean and std over each whole feature map (as ``patch_stats`` with a 1 x 1 grid, so the mixer
    computes the same statistics at training time): f [B, C, H, W] -> mu, sigma [B, C] (fp32)."""
    mu, sigma = patch_stats(f, 1)  # [B, C, 1, 1]
    return mu.flatten(1), sigma.flatten(1)


def image_pin(
    visual: nn.Module,
    f: torch.Tensor,
    text: torch.Tensor,
    pool: int,
    steps: int = PIN_STEPS,
    lr: float = PIN_LR,
    momentum: float = PIN_MOMENTUM,
    weight_decay: float = PIN_WEIGHT_DECAY,
    relu: bool | None = None,
) -> ImageStyles:
    """Optimise one style per image so CLIP embeds [ReLU](sigma* f_norm + mu*) near ``text``.

    visual: the CLIP image tower, an undilated ResNet or a ViT (frozen, eval; only its style tail,
    ``towers.style_tail``, is used); f: [B, C, H, W] style-site features of the source images
    (``towers.style_features``); text: [D] (one description for all images) or [B, D] unit-norm text
    embeddings; pool: ``towers.style_grid(visual)`` (56 for RN50, 14 for ViT-B/16), the grid the restyled map
    is average-pooled to before the tail; relu: whether the restyle takes a ReLU (None:
    ``towers.style_relu(visual)``: a ResNet's does, a ViT's does not). mu*, sigma* start at each image's
    own statistics (``image_stats``); the loss 1 - cos is summed over images, which are independent: each
    image's result is that of the same call on it alone (float rounding aside).
    """
    b = f.shape[0]
    with torch.no_grad():
        mu, sigma = image_stats(f)  # [B, C]
        f_norm = (f.float() - mu[:, :, None, None]) / sigma[:, :, None, None]  # [B, C, H, W]
    target = text.float().expand(b, -1) if text.dim() == 1 else text.float()  # [B, D]
    index = torch.arange(b, device=f.device)
    mu_s, sigma_s, cos, order = pin_optimize(
        visual,
        [(f_norm, index)],
        mu,
        sigma,
        target,
        pool,
        PinSGD(steps, lr, momentum, weight_decay),
        relu=relu,
    )
    assert torch.equal(order, index)  # one group holding every image, in batch order
    return ImageStyles(mu_s.detach(), sigma_s.detach(), cos.detach())


def check_description(
    description: str, context_length: int, templates: Sequence = open_clip.OPENAI_IMAGENET_TEMPLATES
) -> bool:
    """Warn (and return False) if CLIP's tokenizer truncates ``description`` in any of the ``templates``
    (start and end tokens included), since the text embedding would then miss its end."""
    encode = open_clip.tokenizer._tokenizer.encode
    longest = max(len(encode(t(description))) for t in templates) + 2
    if longest <= context_length:
        return True
    warnings.warn(
        f"target description {description!r} is {longest} tokens in its longest prompt template, over the "
        f"CLIP text context of {context_length}: the tokenizer truncates it; shorten the description",
        stacklevel=2,
    )
    return False
