"""PIN (Prompt-driven Instance Normalization), the optimisation at the heart of style mining: per-patch
channel statistics (mu*, sigma*) optimised so that CLIP embeds sigma* f_norm + mu* (through a ReLU for a
ResNet's layer1, not for a ViT's signed patch embeddings) near a text.

``pin_optimize`` is the loop (SGD; summed, per-patch weighted loss; bf16/fp16 autocast, the latter with a
loss scaler; optional CUDA graph), ``split_patches`` the grid cut. The tower-specific parts, the style site
and the CLIP tail that embeds the restyled patches, are ``famix.models.towers``. The mining step around it
(which patches, which prompts) is ``famix.style.patch_mining``; image-level PIN (``famix adapt``) is
``famix.style.image_pin``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from famix.models.towers import style_relu, style_tail
from famix.paper import PIN_LR, PIN_MOMENTUM, PIN_STEPS, PIN_WEIGHT_DECAY
from famix.style.stats import grid_edges

# fp16 only: the first loss scale of each batch's PIN (torch's default); overflowing steps halve it
FP16_INIT_SCALE = 2.0**16
# cuda_graph: eager SGD steps before one is captured (momentum buffers created, cuDNN warmed up)
GRAPH_WARMUP = 3


def split_patches(x: torch.Tensor, grid: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cut [B, C, H, W] into its G x G patches, grouped by patch size (at most 4 sizes), in ``x``'s memory
    format (channels_last stays channels_last).

    Returns [(patches [N_g, C, h_g, w_g], flat index [N_g] of each patch in b * G * G + row * G + col)].
    """
    b, c, h, w = x.shape
    nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
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
            if nhwc:  # cut the [B, H, W, C] memory: [N_g, h, w, C], viewed as [N_g, C, h, w]
                region = region.permute(0, 2, 3, 1).reshape(b, nr, ph, nc, pw, c).transpose(2, 3)
                patches = region.reshape(-1, ph, pw, c).contiguous().permute(0, 3, 1, 2)
            else:
                region = region.reshape(b, c, nr, ph, nc, pw).permute(0, 2, 4, 1, 3, 5)
                patches = region.reshape(-1, c, ph, pw)
            groups.append((patches, flat[:, r0:r1, c0:c1].reshape(-1)))
    return groups


class PinSGD(NamedTuple):
    """PIN's optimiser: ``steps`` SGD steps at ``lr`` (per patch, or per image), momentum, weight decay."""

    steps: int = PIN_STEPS
    lr: float = PIN_LR
    momentum: float = PIN_MOMENTUM
    weight_decay: float = PIN_WEIGHT_DECAY


PIN_SGD = PinSGD()  # the paper's


def pin_optimize(
    visual: nn.Module,
    groups: list[tuple[torch.Tensor, torch.Tensor]],
    mu: torch.Tensor,
    sigma: torch.Tensor,
    text: torch.Tensor,
    pool: int,
    sgd: PinSGD = PIN_SGD,
    *,
    amp_dtype: torch.dtype | None = None,
    weight: torch.Tensor | None = None,
    channels_last: bool = False,
    cuda_graph: bool = False,
    relu: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Optimise per-patch styles so CLIP embeds [ReLU](sigma* f_norm + mu*) near the patch's text.

    visual: a CLIP image tower (ResNet or ViT, frozen); groups: ``split_patches`` of the normalised
    style-site features f_norm; mu, sigma: [N, C] initial styles and text: [N, D] unit-norm targets, rows in
    flat patch order (N = B * G * G); pool: the side S the restyled patches are average-pooled to before
    the tail, ``towers.style_grid(visual)`` (56 for RN50, 14 for ViT-B/16); relu: whether the restyle takes
    a ReLU (None: ``towers.style_relu(visual)``, True for a ResNet, False for a ViT). Groups may hold a
    subset of the patches: only those are optimised. The loss 1 - cos is summed over the optimised patches,
    each weighted by ``weight`` [N] if given (the official step: 1 / M, the average), by ``sgd``. Patches
    are independent: a patch's result does not depend on the others in the call.

    How to compute, not what: amp_dtype is the autocast dtype of the CLIP tail (None: fp32; fp16 adds a
    loss scaler); the restyle and pooling run in ``restyle_dtype(amp_dtype)`` (mu*, sigma* and SGD stay
    fp32); ``channels_last`` feeds the tail NHWC (give it a channels_last ``visual``); ``cuda_graph`` (on
    CUDA, not with fp16's loss scaler, more than ``GRAPH_WARMUP`` steps) replays one captured SGD step.
    Returns (mu*, sigma* [M, C], final cosine similarity [M], flat index [M]) for the M optimised patches.
    """
    relu = style_relu(visual) if relu is None else relu
    order = torch.cat([index for _, index in groups])
    mu_p = mu[order].clone().float().requires_grad_(True)
    sigma_p = sigma[order].clone().float().requires_grad_(True)
    target = text[order].float()
    weight = None if weight is None else weight[order].float()
    optimizer = torch.optim.SGD(
        [mu_p, sigma_p], lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay
    )
    device_type = mu.device.type
    scaler = torch.amp.GradScaler(device_type, init_scale=FP16_INIT_SCALE, enabled=amp_dtype == torch.float16)
    graphed = cuda_graph and device_type == "cuda" and not scaler.is_enabled() and sgd.steps > GRAPH_WARMUP
    dtype = restyle_dtype(amp_dtype)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    groups = [(p.to(dtype, memory_format=layout), i) for p, i in groups]  # no copy if they already are

    def similarity() -> torch.Tensor:
        zs, start = [], 0
        for patches, index in groups:  # [n, C, h, w] in the restyle dtype
            n = index.numel()
            scale, shift = (t[start : start + n, :, None, None].to(dtype) for t in (sigma_p, mu_p))
            z = (scale * patches).add_(shift)  # in place: one restyled tensor per group
            if relu:
                z = z.relu_()
            zs.append(F.adaptive_avg_pool2d(z, pool))  # [n, C, S, S]
            start += n
        autocast = torch.autocast(  # a CUDA graph cannot capture autocast's cache of cast weights
            device_type, amp_dtype or torch.bfloat16, enabled=amp_dtype is not None, cache_enabled=not graphed
        )
        with autocast:
            embedding = style_tail(visual, torch.cat(zs))
        return F.cosine_similarity(embedding.float(), target, dim=-1)  # [M]

    def objective() -> torch.Tensor:
        loss = 1 - similarity()
        return loss.sum() if weight is None else (loss * weight).sum()

    if graphed:
        graphed_steps(objective, optimizer, sgd.steps)
    else:
        eager_steps(objective, optimizer, scaler, sgd.steps)
    with torch.no_grad():
        cos = similarity()
    return mu_p.detach(), sigma_p.detach(), cos, order


def eager_steps(
    objective: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, scaler, steps: int
) -> None:
    """Take ``steps`` real optimiser steps on ``objective`` through ``scaler`` (fp16's loss scaler, or a
    disabled one): a step whose scaled gradients overflow is skipped and taken again at the halved scale."""
    done = 0
    while done < steps:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(objective()).backward()
        scale = scaler.get_scale()  # 1.0 (no host sync) unless fp16
        scaler.step(optimizer)  # skipped when the scaled fp16 gradients overflowed
        scaler.update()  # ... which halves the scale: that step is then taken again
        if scaler.get_scale() >= scale:
            done += 1
        elif scaler.get_scale() < 1:
            raise FloatingPointError(
                "style mining: PIN gradients stay non-finite under fp16 autocast even unscaled (the CLIP "
                "tail overflows fp16 on these features): set run.amp=bf16 or run.amp=off"
            )


def restyle_dtype(amp_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype PIN restyles and pools the patches in: bf16 under bf16 autocast (it has fp32's range), else
    fp32 (under fp16 autocast too: fp16's range and precision would cost the styles' gradients accuracy)."""
    return torch.bfloat16 if amp_dtype == torch.bfloat16 else torch.float32


def graphed_steps(objective: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, steps: int) -> int:
    """Take ``steps`` optimiser steps on ``objective`` (CUDA, fixed shapes, no host sync): ``GRAPH_WARMUP``
    eager ones on a side stream (they create SGD's momentum buffers and warm cuDNN up), then one step
    captured as a CUDA graph (capturing runs nothing) and replayed for the rest. Returns ``steps``."""

    def step() -> None:
        objective().backward()
        optimizer.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(GRAPH_WARMUP):
            optimizer.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)  # the captured backward writes fresh gradients at every replay
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # loader threads may use CUDA
        step()
    for _ in range(steps - GRAPH_WARMUP):
        graph.replay()
    return steps
