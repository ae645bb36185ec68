"""``famix mine``: one pass of local style mining over the source set, into a safetensors style bank.

The mining step itself (patch choice, prompts, PIN) is ``famix.style.mining.mine_batches``; this module
only loops it over the source set, resumes an interrupted bank and saves it. ``mine.batch_size`` crops make
a batch (the unit of the prompts' and patch choice's randomness, of resuming and of the bank's order);
``mine.pin_crops`` crops (whole batches, ``pin_batches``) are optimised in one PIN call (``mine_batches``),
which sets only speed and memory. On CUDA a CLIP ResNet image tower runs in channels_last (a ViT's stays
contiguous). Under ``torchrun`` batch b is mined by rank b % world_size and rank 0 writes the bank, the
same as one process writes.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from famix import __version__
from famix.config import RESUMABLE_KEYS, Config, MineConfig, changed_settings
from famix.data.datasets import SeededTransform, build_dataset
from famix.data.labels import IGNORE_INDEX
from famix.data.transforms import normalize, train_transform
from famix.engine.amp import amp_dtype
from famix.engine.distributed import DistInfo, barrier, cleanup, init_distributed, resolve_device
from famix.engine.seeds import item_seed, sequence_seed
from famix.models.clip import build_clip, weights_fingerprint
from famix.models.towers import is_vit, style_channels, style_grid
from famix.progress import progress_bar
from famix.style.bank import StyleBank
from famix.style.mining import MinedStyles, MiningSettings, mine_batches
from famix.style.prompts import TextEmbedder

# the config sections a bank's settings are recorded under (in its metadata) and compared on resume
SETTING_SECTIONS = ("model", "data", "mine", "run")
# mine.pin_crops=null on CUDA: the crops whose patches one PIN call optimises together (RN50, 768 crops, 3x3
# grid: 576 patches of about 35 MiB each in bf16, some 20 GiB); off CUDA one batch per call
CUDA_PIN_CROPS = 64


def mining_settings(m: MineConfig) -> MiningSettings:
    """The settings of the mining step, from the ``mine`` config section (errors name bad options)."""
    return MiningSettings(
        grid=m.grid,
        steps=m.steps,
        vocabulary=tuple(m.vocabulary),
        recipe=m.recipe,
        lr=m.lr,
        momentum=m.momentum,
        weight_decay=m.weight_decay,
        per_class=m.per_class,
    )


def pin_batches(m: MineConfig, device: torch.device) -> int:
    """Loader batches whose patches one PIN call optimises together: ``mine.pin_crops`` crops (null:
    ``CUDA_PIN_CROPS`` on CUDA, one batch elsewhere) in whole batches, at least one. Patches are optimised
    independently (``mine_batches``), so this sets only speed and memory, never the bank."""
    crops = m.pin_crops
    if crops is None:
        crops = CUDA_PIN_CROPS if device.type == "cuda" else m.batch_size
    if crops < 1:
        raise ValueError(f"mine.pin_crops={crops}: give a number of crops >= 1, or null for the default")
    return max(1, crops // m.batch_size)


def mine(cfg: Config, progress: bool = True) -> StyleBank:
    """Mine a style bank for ``cfg.data.train`` with ``cfg.model``'s CLIP into ``cfg.style.bank``; resumes
    that bank if it was interrupted (same settings), and writes it atomically every ``save_every`` batches."""
    m, seed = cfg.mine, cfg.run.seed
    if not cfg.style.bank:
        raise ValueError("set style.bank=PATH: the style bank `famix mine` writes (and `famix train` reads)")
    out = cfg.style.bank
    settings = mining_settings(m)
    info = init_distributed(cfg.run.device)  # a process group only under torchrun
    device = resolve_device(cfg.run.device, info)
    clip = build_clip(cfg.model.backbone, cfg.model.weights, device=device, seed=seed).requires_grad_(False)
    visual, embed, pool = clip.visual, TextEmbedder(clip), style_grid(clip.visual)
    amp = amp_dtype(cfg.run.amp, device)
    names = cfg.model.class_names
    # everything the styles depend on (the mine section less its resumable keys, with the lr resolved; the
    # autocast actually used), recorded in the bank and compared when it is resumed
    mine_keys = {k: v for k, v in asdict(m).items() if f"mine.{k}" not in RESUMABLE_KEYS}
    recorded = {
        "model": {
            "backbone": cfg.model.backbone,
            "weights": weights_fingerprint(cfg.model.weights),
            "class_names": list(names),
        },
        "data": {"train": cfg.data.train},
        "mine": {**mine_keys, "lr": settings.lr},
        "run": {"seed": seed, "amp": cfg.run.amp if amp is not None else "off"},
    }
    bank = _resume_or_new(Path(out), names, style_channels(visual), recorded)
    per_call = pin_batches(m, device)
    channels_last = device.type == "cuda" and not is_vit(visual)
    if channels_last:
        visual = visual.to(memory_format=torch.channels_last)
    dataset = SeededTransform(build_dataset(cfg.data.train), train_transform(m.crop, jitter=0, hflip=0))
    total, size = min(len(dataset), m.max_images or len(dataset)), m.batch_size
    start, batches = bank.metadata.get("batches_done", 0), math.ceil(total / size)
    # this rank's share: batch b goes to rank b % world, whatever the start, so a resume may use another world
    share = range(info.rank, batches, info.world_size)
    todo = [b for b in share if b >= start]
    items = [(i, item_seed(seed, i)) for b in todo for i in range(b * size, min(b * size + size, total))]
    loader = iter(DataLoader(dataset, batch_size=size, sampler=items, num_workers=cfg.data.workers))
    desc = f"mine (rank {info.rank})" if info.enabled else "mine"
    bar = progress_bar(total=len(share), initial=len(share) - len(todo), desc=desc, disable=not progress)
    # a round: per_call batches per rank, one PIN call each; rank 0 appends the round in batch order and saves
    # at round ends, so batches_done stays a batch count (and the bank that of one process)
    per_round = per_call * info.world_size
    for first in range(start, batches, per_round):
        last = min(first + per_round, batches)
        own = [b for b in todo if first <= b < last]
        mined = _mine_call(visual, embed, loader, own, cfg, settings, pool, amp, channels_last, device)
        bar.update(len(own))
        mined_here = _gather_on_main(list(zip(own, mined, strict=True)), info)  # rank 0: every rank's
        if info.main:
            for _, styles in sorted((p for part in mined_here for p in part), key=lambda p: p[0]):
                bank.add(styles.mu, styles.sigma, styles.classes, IGNORE_INDEX)
            bank.metadata["batches_done"] = last
            bank.metadata["images"] = min(last * size, total)
            if last // m.save_every > first // m.save_every:  # passed a multiple of save_every
                bank.save(out)
        if mined:
            cos = torch.cat([s.cos for s in mined]).mean().item()
            bar.set_postfix(**({"styles": len(bank)} if info.main else {}), cos=f"{cos:.3f}")
    bar.close()
    if info.main:
        bank.save(out)
    barrier()
    cleanup()
    return bank


def _mine_call(visual, embed, loader, own, cfg, settings, pool, amp, channels_last, device) -> list:
    """The styles (on the CPU) of this rank's batches ``own`` of a round, the next ones ``loader`` yields,
    in one PIN call."""
    m, pending = cfg.mine, []  # the batches of the call: (images, labels, generator)
    for batch in own:
        images, labels, _ = next(loader)  # no jitter: _ is the identity
        generator = torch.Generator().manual_seed(sequence_seed(cfg.run.seed, batch))
        pending.append((normalize(images.to(device)), labels.to(device), generator))
    if not pending:
        return []
    try:
        mined = mine_batches(
            visual,
            embed,
            pending,
            cfg.model.class_names,
            settings,
            pool,
            IGNORE_INDEX,
            amp,
            channels_last,
            m.cuda_graph,
        )
    except torch.OutOfMemoryError as error:
        raise torch.OutOfMemoryError(
            f"{error}\nstyle mining: {len(pending) * m.batch_size} crops per PIN call do not fit: set "
            f"mine.pin_crops lower (down to mine.batch_size={m.batch_size}); it changes only the speed"
        ) from error
    return [MinedStyles(*(t.cpu() for t in styles)) for styles in mined]


def _gather_on_main(part: list, info: DistInfo) -> list[list]:
    """Every rank's ``part`` (a picklable list), in rank order, on rank 0 (elsewhere: an empty list)."""
    if not info.enabled:
        return [part]
    parts = [None] * info.world_size if info.main else None
    dist.gather_object(part, parts, dst=0)
    return parts or []


def _resume_or_new(out: Path, names, channels: int, recorded: dict) -> StyleBank:
    """A new bank recording ``recorded`` (config sections), or the bank at ``out`` if it was mined with the
    same settings (all but ``config.RESUMABLE_KEYS``); otherwise a FileExistsError naming the changes."""
    if not out.is_file():
        return StyleBank(list(names), channels, metadata={**recorded, "famix_version": __version__})
    bank = StyleBank.load(out)
    changed = changed_settings(bank.metadata, recorded, SETTING_SECTIONS)
    if bank.channels != channels:
        changed.append(f"style channels: {bank.channels} -> {channels}")
    if changed:
        raise FileExistsError(
            f"style bank {out} exists but was mined with other settings: {'; '.join(changed)}. famix resumes "
            "only the same mining run (mine.save_every, mine.max_images and run.device may differ): pass "
            "another style.bank, or move that file away"
        )
    return bank
