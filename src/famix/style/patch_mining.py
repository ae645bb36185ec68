"""Local style mining ("Augment"): Prompt-driven Instance Normalization (PIN) on feature patches.

One mining step (``mine_batches`` of one batch) takes a batch of images and labels, cuts the style-site
features (``famix.models.towers``: a CLIP ResNet's layer1, a CLIP ViT's patch embeddings) into a G x G
grid, chooses the patches to mine, and optimises each chosen patch's channel statistics (mu*, sigma*) so
that the CLIP image embedding of the restyled patch moves toward the text "<style word> <dominant class>"
(method.md section 3). Two recipes (``RECIPE_LR``: each one's default lr):

- ``famix``: every patch (or at most ``per_class`` per dominant class, drawn at random), loss summed over
  patches, lr per patch: a patch's result does not depend on which other patches share its batch.
- ``official``: the official code exactly: the first patch of each distinct dominant class in patch-major
  order (``first_per_class``), optimised together on the loss averaged over them with lr 1 (= per-patch
  lr 1/N and weight decay 1e-4 * N on a summed loss).

The PIN loop itself is ``famix.style.pin``. Speed: how a step computes changes what it computes by float
rounding at most (in fp32 on CPU, the only difference from the plain computation is the attention pool's
rounding, about 1e-8 on a mined bank):
- ``towers.pooled_embedding``: a CLIP ResNet's attention pool computes only the one query it keeps.
- bf16 autocast: the restyle and the pooling run in bf16 too (``restyle_dtype``), so nothing the size of
  the patches is held in fp32 in the PIN loop; the styles mu*, sigma* and SGD stay fp32.
- ``channels_last``: stem, layer1, the patches and the CLIP tail in NHWC (pass a channels_last ``visual``;
  meant for CLIP ResNets).
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
from torch import nn

from famix.models.towers import style_features, style_relu
from famix.style.pin import PinSGD, pin_optimize, restyle_dtype, split_patches
from famix.style.prompts import draw_prompts
from famix.style.stats import dominant_class, normalize_patches, patch_stats

# the recipes and the lr each uses when none is given (famix: per patch; official: on the averaged loss)
RECIPE_LR = {"famix": 0.1, "official": 1.0}


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
    """Mine the styles of batches [(images [B, 3, H, W] CLIP-normalised, labels [B, H, W], generator)] in one
    PIN call: the styles of each batch.

    visual: the CLIP image tower, an undilated ResNet or a ViT (frozen; in channels_last if
    ``channels_last``); embed: prompts -> [N, D] unit-norm text embeddings (a ``TextEmbedder``); a batch's
    generator: its randomness (style words, per_class draws); pool: ``towers.style_grid(visual)`` (56 for
    RN50, 14 for ViT-B/16). The restyle takes a ReLU as ``towers.style_relu(visual)`` says. amp_dtype,
    channels_last, cuda_graph: how to compute (``pin_optimize``), not what.

    Each batch's patch choice and prompts come from its own generator, and every patch is optimised on its
    own (a per-patch loss weight keeps the official recipe's average per batch), so each batch's styles are
    those it gets alone: only speed and memory depend on how many batches share a call (float rounding
    aside: the CLIP tail then runs on a larger batch).
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
        PinSGD(s.steps, s.lr, s.momentum, s.weight_decay),
        amp_dtype=amp_dtype,
        weight=weight,
        channels_last=channels_last,
        cuda_graph=cuda_graph,
        relu=style_relu(visual),
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
    """The part of a mining step before PIN: style-site features [B, C, h, w] (``towers.style_features``:
    ResNet layer1 at H/4, ViT patch embeddings at H/P; fp32), their patch statistics, dominant classes and
    prompts (from ``generator``), the chosen patches; the normalised patches are handed over in ``dtype``
    (PIN's restyle dtype) and, if ``channels_last``, in NHWC."""
    s = settings
    layout = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        f = style_features(visual, images.contiguous(memory_format=layout))  # [B, C, h, w]
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
