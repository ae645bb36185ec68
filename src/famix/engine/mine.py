"""``famix mine``: one pass of local style mining over the source set, into a safetensors style bank."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from famix import __version__
from famix.config import Config
from famix.data.datasets import SeededTransform, build_dataset
from famix.data.labels import IGNORE_INDEX
from famix.data.transforms import train_transform
from famix.engine.amp import amp_dtype
from famix.engine.distributed import resolve_device
from famix.engine.seeds import item_seed, sequence_seed
from famix.models.clip import build_clip, clip_preprocess_size, weights_fingerprint
from famix.progress import progress_bar
from famix.style.bank import StyleBank
from famix.style.mining import pin_optimize, split_patches
from famix.style.prompts import TextEmbedder, prompt
from famix.style.stats import dominant_class, normalize_patches, patch_stats

# settings that must match for a bank to be resumed (appending to a bank mined otherwise would mix styles)
_RESUME_KEYS = (
    "backbone",
    "weights",
    "grid",
    "steps",
    "lr",
    "seed",
    "source",
    "vocabulary",
    "crop",
    "batch_size",
    "per_class",
)


def first_per_class(classes: torch.Tensor) -> torch.Tensor:
    """[N] classes -> [N] bool, True at the first patch of each distinct class (the official quirk)."""
    return cap_per_class(classes, 1)


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


def mine(cfg: Config, progress: bool = True) -> StyleBank:
    """Mine a style bank for ``cfg.data.train`` with ``cfg.model``'s CLIP; resumes ``cfg.mine.out`` if it
    was interrupted (same settings), and writes it atomically every ``save_every`` batches."""
    m, seed = cfg.mine, cfg.run.seed
    if not cfg.style.bank:
        raise ValueError("set style.bank=PATH: the style bank `famix mine` writes (and `famix train` reads)")
    out = cfg.style.bank
    if m.per_class is not None and (m.per_class < 1 or m.recipe == "official"):
        raise ValueError(
            f"mine.per_class={m.per_class}: give a number of patches >= 1 per class and batch (or null for "
            "all), and not together with mine.recipe=official"
        )
    device = resolve_device(cfg.run.device)
    clip = build_clip(cfg.model.backbone, cfg.model.weights, device=device, seed=seed).requires_grad_(False)
    visual, embed, pool = clip.visual, TextEmbedder(clip), clip_preprocess_size(clip) // 4
    amp = amp_dtype(cfg.run.amp, device)
    names = cfg.model.class_names
    meta = {
        "backbone": cfg.model.backbone,
        "weights": weights_fingerprint(cfg.model.weights),
        "grid": m.grid,
        "steps": m.steps,
        "lr": m.lr,
        "momentum": m.momentum,
        "weight_decay": m.weight_decay,
        "seed": seed,
        "source": cfg.data.train,
        "vocabulary": list(m.vocabulary),
        "crop": m.crop,
        "batch_size": m.batch_size,
        "recipe": m.recipe,
        "per_class": m.per_class,
        "famix_version": __version__,
    }
    bank = _resume_or_new(Path(out), names, visual.layer1[-1].conv3.out_channels, meta)
    dataset = SeededTransform(build_dataset(cfg.data.train), train_transform(m.crop, jitter=0, hflip=0))
    total = min(len(dataset), m.max_images or len(dataset))
    start = bank.metadata.get("batches_done", 0)
    items = [(i, item_seed(seed, i)) for i in range(start * m.batch_size, total)]
    loader = DataLoader(dataset, batch_size=m.batch_size, sampler=items, num_workers=cfg.data.workers)
    bar = progress_bar(
        loader, total=math.ceil(total / m.batch_size), initial=start, desc="mine", disable=not progress
    )
    for batch, (images, labels) in enumerate(bar, start=start):
        mu, sigma, classes, cos = mine_batch(
            visual,
            embed,
            images.to(device),
            labels.to(device),
            cfg,
            torch.Generator().manual_seed(sequence_seed(seed, batch)),
            pool,
            amp,
        )
        bank.add(mu, sigma, classes, IGNORE_INDEX)
        bank.metadata["batches_done"] = batch + 1
        bank.metadata["images"] = min((batch + 1) * m.batch_size, total)
        bar.set_postfix(styles=len(bank), cos=f"{cos.mean().item():.3f}")
        if (batch + 1) % m.save_every == 0:
            bank.save(out)
    bank.save(out)
    return bank


def mine_batch(
    visual,
    embed: TextEmbedder,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: Config,
    generator: torch.Generator,
    pool: int,
    amp_dtype=None,
) -> tuple[torch.Tensor, ...]:
    """Mine the styles of one batch: images [B, 3, H, W] normalised, labels [B, H, W].

    pool: CLIP input size / 4. Returns mu*, sigma* [M, C], classes [M] (trainId or 255) and the final
    cosine [M] of the mined patches.
    """
    m, names = cfg.mine, cfg.model.class_names
    with torch.no_grad():
        f = visual.layer1(visual.stem(images))  # [B, C, H/4, W/4]
        mu, sigma = patch_stats(f, m.grid)  # [B, C, G, G]
        f_norm = normalize_patches(f, mu, sigma)
    c = f.shape[1]
    classes = dominant_class(labels, m.grid, len(names), IGNORE_INDEX).reshape(-1)  # [N]
    flat_mu, flat_sigma = (t.permute(0, 2, 3, 1).reshape(-1, c) for t in (mu, sigma))  # [N, C]
    words = torch.randint(len(m.vocabulary), (classes.numel(),), generator=generator).tolist()
    texts = [
        prompt(m.vocabulary[w], names[k] if k < len(names) else None)
        for w, k in zip(words, classes.tolist(), strict=True)
    ]
    target = embed(texts)
    groups = split_patches(f_norm, m.grid)
    if m.recipe == "official" or m.per_class:
        keep = (
            first_per_class(classes)
            if m.recipe == "official"
            else cap_per_class(classes, m.per_class, generator)
        )
        groups = [(p[keep[i]], i[keep[i]]) for p, i in groups]
    mu_s, sigma_s, cos, order = pin_optimize(
        visual,
        groups,
        flat_mu,
        flat_sigma,
        target,
        pool,
        m.steps,
        m.lr if m.lr is not None else 0.1,
        m.momentum,
        m.weight_decay,
        amp_dtype,
    )
    return mu_s, sigma_s, classes[order], cos


def _resume_or_new(out: Path, names, channels: int, meta: dict) -> StyleBank:
    if not out.is_file():
        return StyleBank(list(names), channels, metadata=dict(meta))
    bank = StyleBank.load(out)
    diff = [k for k in _RESUME_KEYS if bank.metadata.get(k) != meta[k]]
    if diff or bank.channels != channels or bank.class_names != list(names):
        raise FileExistsError(
            f"style bank {out} exists but was mined with other settings ({', '.join(diff)}); "
            "famix resumes only identical runs: pass another mine.out or move that file away"
        )
    return bank
