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

Mixed precision: bf16 autocast runs the CLIP tail as is. fp16 autocast is honoured with a loss scaler
(``torch.amp.GradScaler``, as in training), and a step whose scaled fp16 gradients overflow is taken again
at the lowered scale, so every patch still gets exactly ``steps`` SGD updates. Callers pass the dtype
(None: fp32; the engine passes None off CUDA).
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
) -> MinedStyles:
    """Mine the styles of one batch: images [B, 3, H, W] (CLIP-normalised), labels [B, H, W].

    visual: the undilated CLIP ResNet image tower (frozen); embed: prompts -> [N, D] unit-norm text
    embeddings (a ``TextEmbedder``); generator: the batch's randomness (style words, per_class draws);
    pool: CLIP input size / 4 (56 for RN50).
    """
    s = settings
    with torch.no_grad():
        f = visual.layer1(visual.stem(images))  # [B, C, H/4, W/4]
        mu, sigma = patch_stats(f, s.grid)  # [B, C, G, G]
        f_norm = normalize_patches(f, mu, sigma)
    c = f.shape[1]
    grid_classes = dominant_class(labels, s.grid, len(class_names), ignore_index)  # [B, G, G]
    classes = grid_classes.reshape(-1)  # [N] in flat order b * G * G + row * G + col
    flat_mu, flat_sigma = (t.permute(0, 2, 3, 1).reshape(-1, c) for t in (mu, sigma))  # [N, C]
    target = embed(draw_prompts(classes, class_names, s.vocabulary, generator))  # [N, D]
    groups = split_patches(f_norm, s.grid)
    if s.recipe == "official" or s.per_class:
        keep = (
            first_per_class(grid_classes).reshape(-1)
            if s.recipe == "official"
            else cap_per_class(classes, s.per_class, generator)
        )
        groups = [(p[keep[i]], i[keep[i]]) for p, i in groups]
    mu_s, sigma_s, cos, order = pin_optimize(
        visual,
        groups,
        flat_mu,
        flat_sigma,
        target,
        pool,
        s.steps,
        s.lr,
        s.momentum,
        s.weight_decay,
        amp_dtype,
        average=s.recipe == "official",
    )
    return MinedStyles(mu_s, sigma_s, classes[order], cos)


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
    average: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Optimise per-patch styles so CLIP embeds ReLU(sigma* f_norm + mu*) near the patch's text.

    groups: ``split_patches`` of the normalised features f_norm; mu, sigma: [N, C] initial styles and
    text: [N, D] unit-norm targets, rows in flat patch order (N = B * G * G); pool: CLIP input size / 4
    (56 for RN50). Groups may hold a subset of the patches: only those are optimised. The loss 1 - cos is
    summed over the optimised patches, or averaged (``average``, the official step). amp_dtype: the
    autocast dtype of the CLIP tail (None: fp32; fp16 adds a loss scaler).
    Returns (mu*, sigma* [M, C], final cosine similarity [M], flat index [M]) for the M optimised patches.
    """
    order = torch.cat([index for _, index in groups])
    mu_p = mu[order].clone().float().requires_grad_(True)
    sigma_p = sigma[order].clone().float().requires_grad_(True)
    target = text[order].float()
    optimizer = torch.optim.SGD([mu_p, sigma_p], lr=lr, momentum=momentum, weight_decay=weight_decay)
    device_type = mu.device.type
    scaler = torch.amp.GradScaler(device_type, init_scale=FP16_INIT_SCALE, enabled=amp_dtype == torch.float16)

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
        return F.cosine_similarity(embedding.float(), target, dim=-1)  # [M]

    done = 0
    while done < steps:
        optimizer.zero_grad(set_to_none=True)
        loss = 1 - similarity()
        scaler.scale(loss.mean() if average else loss.sum()).backward()
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
