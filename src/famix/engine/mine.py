"""Local style mining over a source set into a style bank: the machinery ``famix mine`` runs.

The mining step itself (patch choice, prompts, PIN) is ``famix.style.patch_mining.mine_batches``; this module
loops it over the source set (:func:`mine_pass`) from where a bank stopped. ``mine.batch_size`` crops make
a batch (the unit of the prompts' and patch choice's randomness, of resuming and of the bank's order);
``mine.pin_crops`` crops (whole batches, ``pin_batches``) are optimised in one PIN call (``mine_batches``),
which sets only speed and memory. On CUDA a CLIP ResNet image tower runs in channels_last (a ViT's stays
contiguous). Under ``torchrun`` batch b is mined by rank b % world_size and rank 0 writes the bank, the
same as one process writes. What decides a bank (its run record) and how much of it there is to mine:
:func:`mine_record`, :func:`mining_plan`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from famix.config import RESUMABLE_KEYS, Config, MineConfig
from famix.data.datasets import SeededTransform, build_dataset
from famix.data.labels import IGNORE_INDEX
from famix.data.transforms import normalize, train_transform
from famix.engine.amp import amp_dtype
from famix.engine.distributed import DistInfo, barrier, current, require_session, resolve_device
from famix.engine.runs import RunRecord
from famix.engine.seeds import item_seed, sequence_seed
from famix.engine.train import normalization_settings
from famix.models.build import normalization
from famix.models.clip import build_clip, weights_fingerprint
from famix.models.towers import style_channels, style_grid, tower
from famix.progress import progress_bar
from famix.style.bank import StyleBank
from famix.style.patch_mining import MinedStyles, MiningSettings, mine_batches
from famix.style.prompts import TextEmbedder

# mine.pin_crops=null on CUDA: the crops whose patches one PIN call optimises together (RN50, 768 crops, 3x3
# grid: 576 patches of about 35 MiB each in bf16, some 20 GiB); off CUDA one batch per call
CUDA_PIN_CROPS = 64


def mining_settings(m: MineConfig) -> MiningSettings:
    """The settings of the mining step, from the ``mine`` config section (errors name bad options)."""
    given = {f.name: getattr(m, f.name) for f in fields(MiningSettings)}
    return MiningSettings(**{**given, "vocabulary": tuple(m.vocabulary)})


def mine_record(cfg: Config) -> RunRecord:
    """What decides a bank: the CLIP (backbone, class names, label set if given, weights' fingerprint), the
    source spec, the ``mine`` section less its resumable keys (lr resolved), the seed and the autocast
    actually used."""
    m, settings = cfg.mine, mining_settings(cfg.mine)
    amp = amp_dtype(cfg.run.amp, resolve_device(cfg.run.device, current()))
    return RunRecord(
        "mine",
        {
            "model": {
                "backbone": cfg.model.backbone,
                "class_names": list(cfg.model.class_names),
                **({"classes": cfg.model.classes} if cfg.model.classes is not None else {}),
                **normalization_settings(cfg.model),
            },
            "data": {"train": cfg.data.train},
            "mine": {
                **{k: v for k, v in asdict(m).items() if f"mine.{k}" not in RESUMABLE_KEYS},
                "lr": settings.lr,
            },
            "run": {"seed": cfg.run.seed, "amp": cfg.run.amp if amp is not None else "off"},
        },
        {"clip weights": weights_fingerprint(cfg.model.weights)},
    )


def source_set(cfg: Config) -> SeededTransform:
    """The crops mining reads: ``data.train`` at ``mine.crop``, no jitter, no flip."""
    source = build_dataset(cfg.data.train, cfg.model.label_set())
    return SeededTransform(source, train_transform(cfg.mine.crop, jitter=0, hflip=0))


def mining_plan(cfg: Config, dataset) -> tuple[int, int]:
    """(images to mine, batches): ``mine.max_images`` of the source set (all when null)."""
    total = min(len(dataset), cfg.mine.max_images or len(dataset))
    return total, math.ceil(total / cfg.mine.batch_size)


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


def mine_pass(
    cfg: Config, dataset, bank: StyleBank | None, metadata: dict, progress: bool = True
) -> StyleBank:
    """Mine ``dataset`` (:func:`source_set`) from ``bank.metadata["batches_done"]`` on (``bank`` None: a new
    bank holding ``metadata``) with ``cfg.model``'s CLIP, appending to the bank and saving it to
    ``cfg.style.bank`` (atomically) every ``mine.save_every`` batches and at the end. Under torchrun (inside
    ``distributed.session()``) every rank mines its share."""
    m, seed, out = cfg.mine, cfg.run.seed, cfg.style.bank
    settings = mining_settings(m)
    info = current()
    require_session(info, "mining")
    device = resolve_device(cfg.run.device, info)
    clip = build_clip(cfg.model.backbone, cfg.model.weights, device=device, seed=seed).requires_grad_(False)
    visual, embed, pool = clip.visual, TextEmbedder(clip), style_grid(clip.visual)
    amp = amp_dtype(cfg.run.amp, device)
    norm = normalization(cfg.model)
    if bank is None:
        bank = StyleBank(list(cfg.model.class_names), style_channels(visual), metadata=dict(metadata))
    bank.check_compatible(style_channels(visual), cfg.model.class_names, out)
    per_call = pin_batches(m, device)
    channels_last = device.type == "cuda" and tower(visual).channels_last
    if channels_last:
        visual = visual.to(memory_format=torch.channels_last)
    (total, batches), size = mining_plan(cfg, dataset), m.batch_size
    start = bank.metadata.get("batches_done", 0)
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
        mined = _mine_call(visual, embed, loader, own, cfg, settings, pool, amp, channels_last, device, norm)
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
    return bank


def _mine_call(visual, embed, loader, own, cfg, settings, pool, amp, channels_last, device, norm) -> list:
    """The styles (on the CPU) of this rank's batches ``own`` of a round, the next ones ``loader`` yields,
    in one PIN call; images normalised with ``norm`` (the CLIP weights' ``Normalization``)."""
    m, pending = cfg.mine, []  # the batches of the call: (images, labels, generator)
    for batch in own:
        images, labels, _ = next(loader)  # no jitter: _ is the identity
        generator = torch.Generator().manual_seed(sequence_seed(cfg.run.seed, batch))
        pending.append((normalize(images.to(device), *norm), labels.to(device), generator))
    if not pending:
        return []
    try:
        mined = mine_batches(
            visual,
            embed,
            pending,
            cfg.model.label_set().prompts,  # the class words of the prompts
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
