"""Local style randomisation ("Mix"): restyle each style-site feature patch (a CLIP ResNet's layer1, a CLIP
ViT's patch embeddings) during training.

The deterministic core (``mix_stats`` + ``stats.affine_patches``) is separate from the random draws
(``sample_beta``, ``sample_bank_indices``, ``sample_other_patches``), each a pure function taking an
explicit ``torch.Generator``. ``LocalStyleMixer`` puts them together for a training step, as tensor ops
with no Python loop over images or patches and no GPU->CPU synchronisation.
"""

from __future__ import annotations

import math

import torch

from famix.style.bank import PackedBank
from famix.style.stats import affine_patches, dominant_class, patch_stats

# mode -> (where target styles come from, how they are mixed), the paper's ablations (method.md section 4)
MIX_MODES = {
    "famix": "mined styles of the patch's dominant class, mixed with alpha ~ Beta(b, b) (Augment + Mix)",
    "augment": "mined styles of the patch's dominant class, full replacement, alpha = 0 (Augment only)",
    "mixstyle": "the style of a random other patch of the batch, alpha ~ Beta(b, b) (Mix only)",
    "none": "no restyling (plain training)",
}


def sample_beta(
    shape: tuple[int, ...],
    a: float,
    b: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Beta(a, b) samples from an explicit generator (Johnk's method, in log space for small a, b).

    X = U^(1/a), Y = V^(1/b); given X + Y <= 1, X / (X + Y) ~ Beta(a, b). A draw is accepted with
    probability p = G(a+1) G(b+1) / G(a+b+1) (0.986 for a = b = 0.1); enough vectorised candidates are drawn
    that all fail together with chance < 1e-12 (such an entry would fall back to 0.5). No data-dependent
    loop, no GPU->CPU synchronisation. Meant for a, b <= 1 as FAMix uses; larger values need many candidates.
    """
    p = math.exp(math.lgamma(a + 1) + math.lgamma(b + 1) - math.lgamma(a + b + 1))
    tries = 1 if p >= 1 else min(4096, math.ceil(math.log(1e-12) / math.log1p(-p)))
    tiny = torch.finfo(torch.float32).tiny
    u = torch.rand((tries, *shape), generator=generator, device=device).clamp_min(tiny)
    v = torch.rand((tries, *shape), generator=generator, device=device).clamp_min(tiny)
    log_x, log_y = u.log() / a, v.log() / b
    log_s = torch.logaddexp(log_x, log_y)
    accepted = log_s <= 0
    first = accepted.int().argmax(0, keepdim=True)  # first accepted candidate
    value = torch.exp(log_x - log_s).gather(0, first)[0]
    return torch.where(accepted.any(0), value, torch.full_like(value, 0.5))


def sample_bank_indices(
    classes: torch.Tensor,
    counts: torch.Tensor,
    offsets: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one bank row per patch, uniformly among its class's styles, with fallbacks.

    classes: [...] long, a class in [0, K) or anything else for ignore; counts, offsets: [K + 1] long
    (row K = the ignore bank) describing a bank sorted by class. A class with no style falls back to the
    ignore bank; if that is empty too, ``found`` is False and the patch keeps its own style.
    Returns (index [...] long, found [...] bool).
    """
    k = counts.numel() - 1
    bucket = torch.where((classes >= 0) & (classes < k), classes, k)
    bucket = torch.where(counts[bucket] > 0, bucket, k)
    n = counts[bucket]
    u = torch.rand(classes.shape, generator=generator, device=classes.device)
    pick = torch.minimum((u * n).long(), (n - 1).clamp_min(0))
    found = n > 0
    return torch.where(found, offsets[bucket] + pick, 0), found  # row 0 for not-found: always a valid index


def sample_other_patches(
    batch: int, patches: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """For each of ``batch * patches`` patches, the flat index of a uniformly drawn *other* patch."""
    n = batch * patches
    if n < 2:
        return torch.zeros(n, dtype=torch.long, device=device)
    shift = 1 + (torch.rand(n, generator=generator, device=device) * (n - 1)).long().clamp_max(n - 2)
    return (torch.arange(n, device=device) + shift) % n


def mix_stats(
    mu: torch.Tensor, sigma: torch.Tensor, mu_t: torch.Tensor, sigma_t: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha * own + (1 - alpha) * target. mu, sigma, mu_t, sigma_t: [B, C, G, G]; alpha: [B, C, 1, 1]."""
    return alpha * mu + (1 - alpha) * mu_t, alpha * sigma + (1 - alpha) * sigma_t


class LocalStyleMixer:
    """Restyles a training batch's style-site features (method.md section 4); never used at evaluation.

    ``bank`` is a :class:`~famix.style.bank.PackedBank` on the training device; label values outside
    [0, num_classes) (``ignore_index`` among them) count as ignore when finding dominant classes; ``relu``:
    whether restyled features take a ReLU (``towers.style_relu``: True for a ResNet's layer1, False for a
    ViT's signed patch embeddings). Call ``mixer(f, labels)`` with f: [B, C, H, W] and labels: [B, H', W']
    (the label crop at input resolution).
    """

    def __init__(
        self,
        mode: str,
        grid: int = 3,
        beta: float = 0.1,
        num_classes: int = 19,
        bank: PackedBank | None = None,
        generator: torch.Generator | None = None,
        ignore_index: int = 255,
        relu: bool = True,
    ):
        if mode not in MIX_MODES:
            raise ValueError(f"unknown mix mode {mode!r}; choose one of: {', '.join(MIX_MODES)}")
        if mode in ("famix", "augment") and bank is None:
            raise ValueError(
                f"mix mode {mode!r} needs a style bank: set style.bank=PATH (made by `famix mine`)"
            )
        if bank is not None and bank.mu.shape[0] == 0:  # an all-empty bank: one dummy row, never selected
            bank = bank._replace(
                mu=bank.mu.new_zeros(1, bank.mu.shape[1]), sigma=bank.sigma.new_ones(1, bank.sigma.shape[1])
            )
        self.mode, self.grid, self.beta, self.num_classes = mode, grid, beta, num_classes
        self.ignore_index, self.relu = ignore_index, relu
        self.bank, self.generator = bank, generator

    def __call__(self, f: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return f
        b, c = f.shape[:2]
        mu, sigma = patch_stats(f, self.grid)  # [B, C, G, G] fp32
        if self.mode == "mixstyle":
            flat = lambda t: t.permute(0, 2, 3, 1).reshape(-1, c)  # noqa: E731  [B*G*G, C]
            other = sample_other_patches(b, self.grid**2, self.generator, f.device)
            mu_t, sigma_t = (
                flat(t)[other].view(b, self.grid, self.grid, c).permute(0, 3, 1, 2) for t in (mu, sigma)
            )
        else:
            bank = self.bank
            classes = dominant_class(labels, self.grid, self.num_classes, self.ignore_index)  # [B, G, G]
            index, found = sample_bank_indices(
                classes, bank.counts, bank.offsets, self.generator
            )  # [B, G, G]
            keep = ~found[:, None]
            mu_t = torch.where(keep, mu, bank.mu[index].permute(0, 3, 1, 2))
            sigma_t = torch.where(keep, sigma, bank.sigma[index].permute(0, 3, 1, 2))
        if self.mode == "augment":
            alpha = torch.zeros(b, c, 1, 1, device=f.device)
        else:
            alpha = sample_beta((b, c, 1, 1), self.beta, self.beta, self.generator, f.device)
        mu_mix, sigma_mix = mix_stats(mu, sigma, mu_t, sigma_t, alpha)
        # [ReLU](sigma_mix * (f - mu) / sigma + mu_mix) as one multiply-add, in f's dtype and memory format
        scale = sigma_mix / sigma
        return affine_patches(f, scale, mu_mix - mu * scale, self.relu)
