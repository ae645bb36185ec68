"""Image-level PIN (PODA, ICCV 2023): one target style per source image, driven by a domain description.

PODA ("Prompt-driven zero-shot domain adaptation") mines, for each source image, the channel statistics
(mu*, sigma*) of its *whole* style-site feature map (``famix.models.towers``: a CLIP ResNet's layer1, a
CLIP ViT's patch embeddings) that make CLIP embed the restyled map near the text of an unseen target
domain ("driving at night"). Two recipes:

- ``poda`` (default): the official PIN_aug.py exactly. Batches of ``batch`` = 16 images (the last at its own
  size); statistics as its ``calc_mean_std`` (unbiased variance + 1e-5, square root); sigma* clamped at 0
  before every forward; [ReLU](f_norm * sigma* + mu*) average-pooled to the tail's grid (``--resize_feat``);
  the embedding divided by its detached norm; loss 1 - cos averaged over the batch; SGD lr 1, momentum 0.9,
  weight decay 1e-4; 100 steps; float32; the ResNet tail through CLIP's full attention pool. A style
  therefore depends on the batch it was mined in (the mean loss's gradient is 1/b per image).
- ``famix``: ours, batch-independent: FAMix's PIN (``famix.style.pin``, one patch per image), the loss
  summed over images with a per-image lr (default 0.1), famix's statistics, no clamp.

``famix adapt`` fine-tunes on source crops restyled by such styles; ``famix eval --condition`` restyles each
labelled test image's map by its own (famix's recipe, ``image_restyle``) to measure a model under words.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from famix.models.towers import style_relu, style_tail, tower
from famix.paper import (
    PIN_LR,
    PIN_MOMENTUM,
    PIN_STEPS,
    PIN_WEIGHT_DECAY,
    PODA_BATCH,
    PODA_EPS,
    PODA_LR,
    RECIPES,
)
from famix.style.pin import PinSGD, pin_optimize
from famix.style.stats import affine_patches, patch_stats


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


def image_restyle(f: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, relu: bool) -> torch.Tensor:
    """Each image's map with its channel statistics replaced by mu, sigma [B, C] (AdaIN):
    [ReLU](sigma * (f - mu_f) / sigma_f + mu), mu_f, sigma_f = ``image_stats(f)``; f [B, C, H, W] -> the same
    shape, dtype and memory format. One multiply-add (scale = sigma / sigma_f, shift = mu - mu_f * scale), so
    the styles ``image_stats(f)`` give f back exactly (f >= 0 where ``relu``, as a ResNet's layer1)."""
    own_mu, own_sigma = image_stats(f)  # [B, C]
    scale = sigma.float() / own_sigma
    shift = mu.float() - own_mu * scale
    return affine_patches(f, scale[:, :, None, None], shift[:, :, None, None], relu)


def poda_stats(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PODA's ``calc_mean_std``: f [B, C, H, W] -> mean, std [B, C, 1, 1] (unbiased variance + 1e-5, sqrt)."""
    n, c = f.shape[:2]
    flat = f.reshape(n, c, -1)  # [B, C, HW]
    std = (flat.var(dim=2) + PODA_EPS).sqrt().view(n, c, 1, 1)
    return flat.mean(dim=2).view(n, c, 1, 1), std


def poda_restyle(f_norm: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, relu: bool) -> torch.Tensor:
    """PODA's PIN forward: sigma clamped at 0 *in place* (its parameter data, as PIN_aug.py does), then
    [ReLU](f_norm * sigma + mu). f_norm [B, C, H, W]; mu, sigma [B, C, 1, 1]."""
    sigma.data.clamp_(min=0)
    z = f_norm * sigma.expand_as(f_norm) + mu.expand_as(f_norm)
    return torch.relu(z) if relu else z


def poda_tail(visual: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The tail PODA embeds through: a ResNet's layer2 -> layer3 -> layer4 -> CLIP's full attention pool
    (every query computed, the first kept, as the official backbone); a ViT's ``towers.style_tail``."""
    if tower(visual).name != "resnet":
        return style_tail(visual, z)
    return visual.attnpool(visual.layer4(visual.layer3(visual.layer2(z))))


def poda_pin(
    visual: nn.Module,
    f: torch.Tensor,
    text: torch.Tensor,
    pool: int,
    steps: int = PIN_STEPS,
    lr: float = PODA_LR,
    momentum: float = PIN_MOMENTUM,
    weight_decay: float = PIN_WEIGHT_DECAY,
    relu: bool = True,
) -> ImageStyles:
    """PIN_aug.py's loop on one batch: f [b, C, H, W] -> its styles (mu, sigma [b, C]: the parameters after
    the last step, as PODA saves them; cos [b]: each image's final cosine to the text, sigma clamped)."""
    b = f.shape[0]
    with torch.no_grad():
        mean, std = poda_stats(f.float())  # [b, C, 1, 1]
        f_norm = (f.float() - mean.expand(f.shape)) / std.expand(f.shape)
    target = (text.float().expand(b, -1) if text.dim() == 1 else text.float()).detach()  # [b, D]
    mu, sigma = nn.Parameter(mean.clone()), nn.Parameter(std.clone())
    optimizer = torch.optim.SGD(
        [{"params": [mu, sigma], "lr": lr}], lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    for _ in range(steps):
        optimizer.zero_grad()
        z = F.adaptive_avg_pool2d(poda_restyle(f_norm, mu, sigma, relu), pool)  # [b, C, pool, pool]
        emb = poda_tail(visual, z)  # [b, D]
        emb = emb / emb.norm(dim=-1, keepdim=True).clone().detach()
        loss = (1 - torch.cosine_similarity(target, emb, dim=1)).mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        z = f_norm * sigma.clamp(min=0) + mu
        emb = poda_tail(visual, F.adaptive_avg_pool2d(torch.relu(z) if relu else z, pool))
        cos = torch.cosine_similarity(target, emb, dim=1)
    return ImageStyles(mu.detach().flatten(1), sigma.detach().flatten(1), cos)


def image_pin(
    visual: nn.Module,
    f: torch.Tensor,
    text: torch.Tensor,
    pool: int,
    steps: int = PIN_STEPS,
    lr: float | None = None,
    momentum: float = PIN_MOMENTUM,
    weight_decay: float = PIN_WEIGHT_DECAY,
    relu: bool | None = None,
    recipe: str = "poda",
    batch: int = PODA_BATCH,
) -> ImageStyles:
    """Optimise one style per image so CLIP embeds [ReLU](sigma* f_norm + mu*) near ``text``.

    visual: the CLIP image tower, an undilated ResNet or a ViT (frozen, eval; only its style tail is used);
    f: [B, C, H, W] style-site features of the source images (``towers.style_features``); text: [D] (one
    description for all images) or [B, D] unit-norm text embeddings; pool: ``towers.style_grid(visual)`` (56
    for RN50, 14 for ViT-B/16), the grid the restyled map is average-pooled to before the tail; relu:
    whether the restyle takes a ReLU (None: ``towers.style_relu(visual)``). ``recipe`` (module docstring):
    ``poda`` mines f in batches of ``batch`` (lr default 1, the loss averaged over each batch), ``famix``
    every image on its own (lr default 0.1 per image, the loss summed). mu*, sigma* start at each image's
    own statistics (each recipe's).
    """
    if recipe not in RECIPES:
        raise ValueError(f"image-level PIN recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
    relu = style_relu(visual) if relu is None else relu
    if recipe == "poda":
        if batch < 1:
            raise ValueError(f"PODA's PIN batch={batch}: give a number of images >= 1")
        lr = PODA_LR if lr is None else lr
        parts = [
            poda_pin(visual, chunk, t, pool, steps, lr, momentum, weight_decay, relu)
            for chunk, t in zip(f.split(batch), _texts(text, f.shape[0]).split(batch), strict=True)
        ]
        return ImageStyles(*(torch.cat(x) for x in zip(*parts, strict=True)))
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
        PinSGD(steps, PIN_LR if lr is None else lr, momentum, weight_decay),
        relu=relu,
    )
    assert torch.equal(order, index)  # one group holding every image, in batch order
    return ImageStyles(mu_s.detach(), sigma_s.detach(), cos.detach())


def _texts(text: torch.Tensor, b: int) -> torch.Tensor:
    return text.expand(b, -1) if text.dim() == 1 else text  # [B, D]


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
