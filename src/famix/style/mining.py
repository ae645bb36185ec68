"""Local style mining ("Augment"): Prompt-driven Instance Normalization (PIN) on feature patches.

One mining step (``mine_batch``) takes a batch of images and labels, cuts the layer1 features into a G x G
grid, chooses the patches to mine, and optimises each chosen patch's channel statistics (mu*, sigma*) so
that the CLIP image embedding of the restyled patch moves toward the text "<style word> <dominant class>"
(method.md section 3). Two recipes (``RECIPE_LR`` gives each one's default lr):

- ``famix``: every patch (or at most ``per_class`` per dominant class, drawn at random), loss summed over
  patches, lr per patch: a patch's result does not depend on which other patches share its batch.
- ``official``: the official code exactly: the first patch of each distinct dominant class in patch-major
  order (``first_per_class``), optimised together on the loss averaged over them with lr 1 (= per-patch
  lr 1/N and weight decay 1e-4 * N on a summed loss).

Speed: how a step computes changes what it computes by float rounding at most (in fp32 on CPU, the only
difference from the plain computation is the attention pool's rounding, about 1e-8 on a mined bank):
- ``pooled_embedding``: CLIP's attention pool computes only the one query it keeps.
- bf16 autocast: the restyle and the pooling run in bf16 too (``restyle_dtype``), so nothing the size of
  the patches is held in fp32 in the PIN loop; the styles mu*, sigma* and SGD stay fp32.
- ``channels_last``: stem, layer1, the patches and the CLIP tail in NHWC (pass a channels_last ``visual``).
- ``mine_batches``: the patches of several batches in one PIN call, each batch's patch choice, prompts and
  (official recipe) loss average as when alone.
- ``cuda_graph``: on CUDA, one SGD step of PIN captured once and replayed (``graphed_steps``).

Mixed precision: callers pass the autocast dtype (None: fp32; the engine passes None off CUDA). fp16
autocast runs the CLIP tail with a loss scaler (``torch.amp.GradScaler``, as in training), the restyle in
fp32, and a step whose scaled fp16 gradients overflow is taken again at the lowered scale, so every patch
still gets exactly ``steps`` SGD updates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from famix.style.prompts import draw_prompts
from famix.style.stats import dominant_class, grid_edges, normalize_patches, patch_stats

# the recipes and the lr each uses when none is given (famix: per patch; official: on the averaged loss)
RECIPE_LR = {"famix": 0.1, "official": 1.0}
# fp16 only: the first loss scale of each batch's PIN (torch's default); overflowing steps halve it
FP16_INIT_SCALE = 2.0**16
# cuda_graph: eager SGD steps before one is captured (momentum buffers created, cuDNN warmed up)
GRAPH_WARMUP = 3


@dataclass(frozen=True)
class MiningSettings:
    """What one mining step computes (the ``mine`` section of the config, less the loader's settings).

    lr None resolves to the recipe's default (``RECIPE_LR``); ``per_class`` (famix recipe only) keeps at
    most that many patches per dominant class and batch, drawn at random (None: all).
    """

    grid: int
    steps: int
    vocabulary: tuple[str, ...]
    recipe: str = "famix"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    per_class: int | None = None

    def __post_init__(self) -> None:
        if self.recipe not in RECIPE_LR:
            raise ValueError(f"mine.recipe={self.recipe!r}: choose one of {', '.join(RECIPE_LR)}")
        if self.per_class is not None and self.recipe == "official":
            raise ValueError(
                f"mine.per_class={self.per_class} cannot be combined with mine.recipe=official (which mines "
                "the first patch of each class per batch): set mine.per_class=null or mine.recipe=famix"
            )
        if self.per_class is not None and self.per_class < 1:
            raise ValueError(
                f"mine.per_class={self.per_class}: give a number of patches >= 1 per class and batch, or "
                "null for all"
            )
        if not self.vocabulary:
            raise ValueError("mine.vocabulary is empty: give at least one style word")
        object.__setattr__(self, "vocabulary", tuple(self.vocabulary))
        if self.lr is None:
            object.__setattr__(self, "lr", RECIPE_LR[self.recipe])


class MinedStyles(NamedTuple):
    """The styles of one mining step: mu, sigma [M, C] (fp32), classes [M] (trainId or the ignore index),
    cos [M] the final cosine similarity of each restyled patch to its text."""

    mu: torch.Tensor
    sigma: torch.Tensor
    classes: torch.Tensor
    cos: torch.Tensor


def mine_batch(
    visual: nn.Module,
    embed: Callable[[list[str]], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    settings: MiningSettings,
    generator: torch.Generator,
    pool: int,
    ignore_index: int,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    cuda_graph: bool = False,
) -> MinedStyles:
    """Mine the styles of one batch: images [B, 3, H, W] (CLIP-normalised), labels [B, H, W].

    visual: the undilated CLIP ResNet image tower (frozen; in channels_last if ``channels_last``); embed:
    prompts -> [N, D] unit-norm text embeddings (a ``TextEmbedder``); generator: the batch's randomness
    (style words, per_class draws); pool: CLIP input size / 4 (56 for RN50). amp_dtype, channels_last,
    cuda_graph: how to compute (``pin_optimize``), not what.
    """
    batch = [(images, labels, generator)]
    return mine_batches(
        visual, embed, batch, class_names, settings, pool, ignore_index, amp_dtype, channels_last, cuda_graph
    )[0]


def mine_batches(
    visual: nn.Module,
    embed: Callable[[list[str]], torch.Tensor],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Generator]],
    class_names: Sequence[str],
    settings: MiningSettings,
    pool: int,
    ignore_index: int,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    cuda_graph: bool = False,
) -> list[MinedStyles]:
    """``mine_batch`` of several batches [(images, labels, generator)] in one PIN call: the styles of each.

    Each batch's patch choice and prompts come from its own generator, and every patch is optimised on its
    own (a per-patch loss weight keeps the official recipe's average per batch), so each batch's styles are
    those of ``mine_batch`` alone: only speed and memory depend on how many batches share a call (float
    rounding aside: the CLIP tail then runs on a larger batch).
    """
    s = settings
    dtype = restyle_dtype(amp_dtype)
    chosen = [  # per batch: its features, statistics, prompts and patch choice
        choose_patches(
            visual, embed, images, labels, class_names, s, generator, ignore_index, dtype, channels_last
        )
        for images, labels, generator in batches
    ]
    by_shape: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}  # patch shape -> parts
    offset = 0
    for c in chosen:
        for patches, index in c.groups:
            by_shape.setdefault(tuple(patches.shape[1:]), []).append((patches, index + offset))
        offset += c.classes.numel()
    groups = [
        parts[0] if len(parts) == 1 else (torch.cat([p for p, _ in parts]), torch.cat([i for _, i in parts]))
        for parts in by_shape.values()
    ]
    mu, sigma, text, classes = (
        torch.cat(t) for t in zip(*((c.mu, c.sigma, c.text, c.classes) for c in chosen), strict=True)
    )
    weight = None
    if s.recipe == "official":  # the loss averaged over each batch's chosen patches
        weight = torch.cat([c.keep / c.keep.sum().clamp(min=1) for c in chosen])
    mu_s, sigma_s, cos, order = pin_optimize(
        visual,
        groups,
        mu,
        sigma,
        text,
        pool,
        s.steps,
        s.lr,
        s.momentum,
        s.weight_decay,
        amp_dtype,
        weight=weight,
        channels_last=channels_last,
        cuda_graph=cuda_graph,
    )
    sizes = torch.tensor([c.classes.numel() for c in chosen], device=order.device)
    owner = torch.repeat_interleave(torch.arange(len(chosen), device=order.device), sizes)[order]
    rows = [(owner == b).nonzero()[:, 0] for b in range(len(chosen))]  # each batch's rows, in PIN order
    return [MinedStyles(mu_s[r], sigma_s[r], classes[order[r]], cos[r]) for r in rows]


class ChosenPatches(NamedTuple):
    """One batch's patches to mine: groups, ``split_patches`` of the normalised features (the chosen patches
    only); for every patch (N = B * G * G rows, flat order) its statistics mu, sigma [N, C], target text
    [N, D], dominant class [N] and keep [N] (1.0 where chosen)."""

    groups: list[tuple[torch.Tensor, torch.Tensor]]
    mu: torch.Tensor
    sigma: torch.Tensor
    text: torch.Tensor
    classes: torch.Tensor
    keep: torch.Tensor


def choose_patches(
    visual: nn.Module,
    embed: Callable[[list[str]], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    settings: MiningSettings,
    generator: torch.Generator,
    ignore_index: int,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> ChosenPatches:
    """The part of a mining step before PIN: layer1 features [B, C, H/4, W/4] (fp32), their patch
    statistics, dominant classes and prompts (from ``generator``), the chosen patches; the normalised
    patches are handed over in ``dtype`` (PIN's restyle dtype) and, if ``channels_last``, in NHWC."""
    s = settings
    layout = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        f = visual.layer1(visual.stem(images.contiguous(memory_format=layout)))  # [B, C, H/4, W/4]
        mu, sigma = patch_stats(f, s.grid)  # [B, C, G, G]
        f_norm = normalize_patches(f, mu, sigma).to(dtype, memory_format=layout)
    c = f.shape[1]
    grid_classes = dominant_class(labels, s.grid, len(class_names), ignore_index)  # [B, G, G]
    classes = grid_classes.reshape(-1)  # [N] in flat order b * G * G + row * G + col
    flat_mu, flat_sigma = (t.permute(0, 2, 3, 1).reshape(-1, c) for t in (mu, sigma))  # [N, C]
    target = embed(draw_prompts(classes, class_names, s.vocabulary, generator))  # [N, D]
    groups = split_patches(f_norm, s.grid)
    keep = torch.ones_like(classes, dtype=torch.bool)
    if s.recipe == "official" or s.per_class:
        keep = (
            first_per_class(grid_classes).reshape(-1)
            if s.recipe == "official"
            else cap_per_class(classes, s.per_class, generator)
        )
        groups = [(p[keep[i]], i[keep[i]]) for p, i in groups]
    return ChosenPatches(groups, flat_mu, flat_sigma, target, classes, keep.float())


def first_per_class(classes: torch.Tensor) -> torch.Tensor:
    """The official patch choice: classes [B, G, G] -> [B, G, G] bool, True at the first patch of each
    distinct class (the ignore index counts as one) in patch-major order: patch j = l * B + b, l = row * G +
    col, so a class present in several images is taken at its earliest patch position."""
    b, g, _ = classes.shape
    patch_major = classes.permute(1, 2, 0).reshape(-1)  # [G * G * B]: index l * B + b
    return cap_per_class(patch_major, 1).view(g, g, b).permute(2, 0, 1)


def cap_per_class(classes: torch.Tensor, cap: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[N] classes -> [N] bool keeping at most ``cap`` patches of each class: drawn uniformly at random
    from ``generator``, or the first ``cap`` in index order when it is None.

    Balances a batch's mining work: the few patches of rare classes are all kept while the many road or
    sky patches are subsampled, so a finer mining grid costs little more than a coarse one.
    """
    n, device = classes.numel(), classes.device
    order = (  # priority: patches earlier in ``order`` are kept first
        torch.arange(n, device=device)
        if generator is None
        else torch.randperm(n, generator=generator).to(device)
    )
    sorted_classes, index = torch.sort(classes[order], stable=True)  # by class, priority order within
    counts = torch.bincount(sorted_classes)
    starts = counts.cumsum(0) - counts
    rank = torch.empty_like(index)
    rank[index] = torch.arange(n, device=device) - starts[sorted_classes]  # rank within its class
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    keep[order] = rank < cap
    return keep


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


def clip_tail(visual: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """layer2 -> layer3 -> layer4 -> attention pool of an undilated CLIP ResNet: [N, C1, S, S] -> [N, D]."""
    return pooled_embedding(visual.attnpool, visual.layer4(visual.layer3(visual.layer2(z))))


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
    weight: torch.Tensor | None = None,
    channels_last: bool = False,
    cuda_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Optimise per-patch styles so CLIP embeds ReLU(sigma* f_norm + mu*) near the patch's text.

    groups: ``split_patches`` of the normalised features f_norm; mu, sigma: [N, C] initial styles and
    text: [N, D] unit-norm targets, rows in flat patch order (N = B * G * G); pool: CLIP input size / 4
    (56 for RN50). Groups may hold a subset of the patches: only those are optimised. The loss 1 - cos is
    summed over the optimised patches, each weighted by ``weight`` [N] if given (the official step: 1 / M,
    the average). Patches are independent: a patch's result does not depend on the others in the call.

    How to compute, not what: amp_dtype is the autocast dtype of the CLIP tail (None: fp32; fp16 adds a
    loss scaler); the restyle and pooling run in ``restyle_dtype(amp_dtype)`` (mu*, sigma* and SGD stay
    fp32); ``channels_last`` feeds the tail NHWC (give it a channels_last ``visual``); ``cuda_graph`` (on
    CUDA, not with fp16's loss scaler, more than ``GRAPH_WARMUP`` steps) replays one captured SGD step.
    Returns (mu*, sigma* [M, C], final cosine similarity [M], flat index [M]) for the M optimised patches.
    """
    order = torch.cat([index for _, index in groups])
    mu_p = mu[order].clone().float().requires_grad_(True)
    sigma_p = sigma[order].clone().float().requires_grad_(True)
    target = text[order].float()
    weight = None if weight is None else weight[order].float()
    optimizer = torch.optim.SGD([mu_p, sigma_p], lr=lr, momentum=momentum, weight_decay=weight_decay)
    device_type = mu.device.type
    scaler = torch.amp.GradScaler(device_type, init_scale=FP16_INIT_SCALE, enabled=amp_dtype == torch.float16)
    graphed = cuda_graph and device_type == "cuda" and not scaler.is_enabled() and steps > GRAPH_WARMUP
    dtype = restyle_dtype(amp_dtype)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    groups = [(p.to(dtype, memory_format=layout), i) for p, i in groups]  # no copy if they already are

    def similarity() -> torch.Tensor:
        zs, start = [], 0
        for patches, index in groups:  # [n, C, h, w] in the restyle dtype
            n = index.numel()
            scale, shift = (t[start : start + n, :, None, None].to(dtype) for t in (sigma_p, mu_p))
            z = (scale * patches).add_(shift).relu_()  # in place: one restyled tensor per group
            zs.append(F.adaptive_avg_pool2d(z, pool))  # [n, C, S, S]
            start += n
        autocast = torch.autocast(  # a CUDA graph cannot capture autocast's cache of cast weights
            device_type, amp_dtype or torch.bfloat16, enabled=amp_dtype is not None, cache_enabled=not graphed
        )
        with autocast:
            embedding = clip_tail(visual, torch.cat(zs))
        return F.cosine_similarity(embedding.float(), target, dim=-1)  # [M]

    def objective() -> torch.Tensor:
        loss = 1 - similarity()
        return loss.sum() if weight is None else (loss * weight).sum()

    done = graphed_steps(objective, optimizer, steps) if graphed else 0
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
    with torch.no_grad():
        cos = similarity()
    return mu_p.detach(), sigma_p.detach(), cos, order


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
