"""Patch-wise feature statistics on a G x G grid: the shared core of style mining and style mixing.

A map of size H is cut into G bands of ``H // G`` rows; the last band also takes the remainder. The same
rule cuts features and labels, so any crop size, grid and channel count works. Everything here is a pure
tensor function: no Python loop over images or patches, no GPU->CPU synchronisation.
"""

from __future__ import annotations

from functools import lru_cache

import torch

EPS = 1e-5


def grid_edges(size: int, grid: int) -> list[int]:
    """Band edges of ``size`` pixels cut in ``grid`` bands: [0, s, 2s, ..., size], s = size // grid."""
    if grid < 1 or size < grid:
        raise ValueError(f"cannot cut a map of {size} pixels into a grid of {grid}: use a smaller grid")
    step = size // grid
    return [i * step for i in range(grid)] + [size]


@lru_cache(maxsize=64)
def band_index(size: int, grid: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[size] long: the band each pixel row (or column) belongs to (cached: do not modify in place)."""
    edges = grid_edges(size, grid)
    lengths = torch.tensor([b - a for a, b in zip(edges[:-1], edges[1:], strict=True)])
    return torch.repeat_interleave(torch.arange(grid), lengths).to(device)


def _membership(size: int, grid: int, device, dtype) -> torch.Tensor:
    """[grid, size] one-hot band membership, so sums over bands are small matrix products."""
    return torch.nn.functional.one_hot(band_index(size, grid, device), grid).T.to(dtype)


def patch_stats(f: torch.Tensor, grid: int, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch, per-channel mean and std of features.

    f: [B, C, H, W] -> mu, sigma: [B, C, G, G]; sigma = sqrt(unbiased variance + eps).
    """
    _, _, h, w = f.shape
    if (h // grid) * (w // grid) < 2:
        raise ValueError(f"patches of a {h}x{w} map on a {grid}x{grid} grid are too small for a std")
    x = f.float()
    rows, cols = _membership(h, grid, x.device, x.dtype), _membership(w, grid, x.device, x.dtype)
    count = torch.einsum("gh,kw->gk", rows, cols)  # [G, G] pixels per patch
    mu = torch.einsum("gh,bchw,kw->bcgk", rows, x, cols) / count
    centred = x - expand_patches(mu, h, w)
    var = torch.einsum("gh,bchw,kw->bcgk", rows, centred * centred, cols) / (count - 1)
    return mu, torch.sqrt(var + eps)


def expand_patches(values: torch.Tensor, h: int, w: int, channels_last: bool = False) -> torch.Tensor:
    """Broadcast per-patch values to pixels: [B, C, G, G] -> [B, C, H, W] (channels_last strides if asked)."""
    grid = values.shape[-1]
    r, c = band_index(h, grid, values.device), band_index(w, grid, values.device)
    if channels_last:  # gather in [B, G, G, C] so that the result is NHWC in memory
        return values.permute(0, 2, 3, 1)[:, r][:, :, c].permute(0, 3, 1, 2)
    return values[:, :, r][:, :, :, c]


def normalize_patches(f: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Instance-normalise each patch: [B, C, H, W] with [B, C, G, G] stats -> [B, C, H, W]."""
    h, w = f.shape[-2:]
    return (f - expand_patches(mu, h, w)) / expand_patches(sigma, h, w)


def restyle(f_norm: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """Give normalised patches new statistics: ReLU(sigma * f_norm + mu), without the ReLU if not ``relu``
    (signed features: a ViT's patch embeddings); [B, C, H, W] -> [B, C, H, W]."""
    h, w = f_norm.shape[-2:]
    out = expand_patches(sigma, h, w) * f_norm + expand_patches(mu, h, w)
    return torch.relu(out) if relu else out


def affine_patches(
    f: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, relu: bool = True
) -> torch.Tensor:
    """ReLU(scale * f + shift) (no ReLU if not ``relu``) with per-patch scale, shift [B, C, G, G]:
    [B, C, H, W] -> [B, C, H, W], in ``f``'s dtype and memory format (channels_last stays channels_last).

    ``restyle(normalize_patches(f, mu, sigma), mu2, sigma2, relu)`` in one pass: scale = sigma2 / sigma,
    shift = mu2 - mu * scale.
    """
    h, w = f.shape[-2:]
    nhwc = f.dim() == 4 and f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous()
    scale, shift = (expand_patches(t.to(f.dtype), h, w, nhwc) for t in (scale, shift))
    out = torch.addcmul(shift, f, scale)
    return out.relu_() if relu else out


def dominant_class(labels: torch.Tensor, grid: int, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Most frequent label value of each patch; ignore counts as a value; ties go to the smallest value.

    labels: [B, H, W] ints (trainIds, ``ignore_index``; other values count as ignore) -> [B, G, G] long,
    each a class in [0, num_classes) or ``ignore_index``.
    """
    b, h, w = labels.shape
    k = num_classes + 1  # one extra bucket for ignore, the largest value so that it loses ties
    value = labels.long()
    value = torch.where((value >= 0) & (value < num_classes), value, num_classes)
    r, c = band_index(h, grid, labels.device), band_index(w, grid, labels.device)
    patch = r[:, None] * grid + c[None, :]  # [H, W]
    slot = (patch[None] * k + value).view(b, -1)
    counts = torch.zeros(b, grid * grid * k, dtype=torch.int32, device=labels.device)
    counts.scatter_add_(1, slot, torch.ones_like(slot, dtype=torch.int32))
    best = counts.view(b, grid, grid, k).argmax(-1)  # argmax returns the first maximum: smallest value
    return torch.where(best == num_classes, ignore_index, best)
