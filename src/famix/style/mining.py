"""Local style mining ("Augment"): Prompt-driven Instance Normalization (PIN) on every feature patch.

For each patch of layer1 features, optimise its channel statistics (mu*, sigma*) so that the CLIP image
embedding of the restyled patch moves toward the text "<style word> <dominant class>" (method.md
section 3). All patches of a batch are optimised at once and independently: the loss is summed over
patches, so a patch's result does not depend on which other patches share its batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from famix.style.stats import grid_edges


def split_patches(x: torch.Tensor, grid: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cut [B, C, H, W] into its G x G patches, grouped by patch size (at most 4 sizes).

    Returns [(patches [N_g, C, h_g, w_g], flat index [N_g] of each patch in b * G * G + row * G + col)].
    """
    b, c, h, w = x.shape
    rows, cols = grid_edges(h, grid), grid_edges(w, grid)
    flat = torch.arange(b * grid * grid, device=x.device).view(b, grid, grid)
    groups = []
    # bands 0..G-2 share one size; the last band may be larger (it takes the remainder)
    for r0, r1 in ((0, grid - 1), (grid - 1, grid)):
        for c0, c1 in ((0, grid - 1), (grid - 1, grid)):
            nr, nc = r1 - r0, c1 - c0
            if nr == 0 or nc == 0:
                continue
            ph, pw = rows[r0 + 1] - rows[r0], cols[c0 + 1] - cols[c0]
            region = x[:, :, rows[r0] : rows[r1], cols[c0] : cols[c1]]
            patches = region.reshape(b, c, nr, ph, nc, pw).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, ph, pw)
            groups.append((patches, flat[:, r0:r1, c0:c1].reshape(-1)))
    return groups


def clip_tail(visual: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """layer2 -> layer3 -> layer4 -> attention pool of an undilated CLIP ResNet: [N, C1, S, S] -> [N, D]."""
    return visual.attnpool(visual.layer4(visual.layer3(visual.layer2(z))))


def pin_optimize(
    visual: nn.Module,
    groups: list[tuple[torch.Tensor, torch.Tensor]],
    mu: torch.Tensor,
    sigma: torch.Tensor,
    text: torch.Tensor,
    pool: int,
    steps: int = 100,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    amp_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Optimise per-patch styles so CLIP embeds ReLU(sigma* f_norm + mu*) near the patch's text.

    groups: ``split_patches`` of the normalised features f_norm; mu, sigma: [N, C] initial styles and
    text: [N, D] unit-norm targets, rows in flat patch order (N = B * G * G); pool: CLIP input size / 4
    (56 for RN50). Groups may hold a subset of the patches: only those are optimised.
    Returns (mu*, sigma* [M, C], final cosine similarity [M], flat index [M]) for the M optimised patches.
    """
    order = torch.cat([index for _, index in groups])
    mu_p = mu[order].clone().float().requires_grad_(True)
    sigma_p = sigma[order].clone().float().requires_grad_(True)
    target = text[order].float()
    optimizer = torch.optim.SGD([mu_p, sigma_p], lr=lr, momentum=momentum, weight_decay=weight_decay)
    device_type = mu.device.type

    def similarity() -> torch.Tensor:
        zs, start = [], 0
        for patches, index in groups:
            n = index.numel()
            z = torch.relu(
                sigma_p[start : start + n, :, None, None] * patches + mu_p[start : start + n, :, None, None]
            )
            zs.append(F.adaptive_avg_pool2d(z, pool))  # [n, C, S, S]
            start += n
        with torch.autocast(device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            embedding = clip_tail(visual, torch.cat(zs))
        return F.cosine_similarity(embedding.float(), target, dim=-1)  # [N]

    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        (1 - similarity()).sum().backward()
        optimizer.step()
    with torch.no_grad():
        cos = similarity()
    return mu_p.detach(), sigma_p.detach(), cos, order
