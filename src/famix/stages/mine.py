"""``famix mine``: mine a style bank into ``style.bank``, resume it, or return the finished bank.

The stage owns the bank's run: its record (:func:`mine_record`: what decides the styles), how much there is
to mine (:func:`mining_plan`), the patch-level step (``famix.style.patch_mining.mine_batches``: patch choice,
prompts, PIN), :func:`run` and :func:`status`. The pass over the source set is ``famix.engine.mine``'s.
``mine.batch_size`` crops make a batch; ``mine.pin_crops`` crops (whole batches, :func:`pin_batches`) are
optimised in one PIN call, which sets only speed and memory. On CUDA a CLIP ResNet image tower runs in
channels_last (a ViT's stays contiguous).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Subset

from famix.config import RESUMABLE_KEYS, Config, MineConfig
from famix.data.datasets import SeededTransform, build_dataset
from famix.data.trainids import IGNORE_INDEX
from famix.data.transforms import normalize, train_transform
from famix.engine.amp import describe, precision
from famix.engine.checks import check_mine_inputs
from famix.engine.distributed import current, resolve_device
from famix.engine.mine import MiningPlan, mine_pass, plan_images
from famix.engine.runs import (
    RunRecord,
    State,
    Status,
    check_same,
    held,
    normalization_settings,
    source_settings,
)
from famix.engine.sampler import SourceMix
from famix.engine.seeds import sequence_seed
from famix.models.build import normalization
from famix.models.clip import build_clip, weights_fingerprint
from famix.models.towers import style_channels, style_grid, tower
from famix.style.bank import StyleBank
from famix.style.patch_mining import MinedStyles, MiningSettings, mine_batches
from famix.style.prompts import TextEmbedder
from famix.version import __version__

REFUSAL = "Pass another style.bank, or move that file away"
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
    return RunRecord(
        "mine",
        {
            "model": {
                "backbone": cfg.model.backbone,
                "class_names": cfg.model.labels.names,
                **({"classes": cfg.model.classes} if cfg.model.classes is not None else {}),
                **normalization_settings(cfg.model),
            },
            "data": source_settings(cfg.data),
            "mine": {
                **{k: v for k, v in asdict(m).items() if f"mine.{k}" not in RESUMABLE_KEYS},
                "lr": settings.lr,
            },
            "run": {
                "seed": cfg.run.seed,
                "amp": precision(cfg.run.amp, resolve_device(cfg.run.device, current()))[0],
            },
        },
        {"clip weights": weights_fingerprint(cfg.model.weights)},
    )


def source_set(cfg: Config) -> SeededTransform:
    """The crops mining reads: ``data.train`` at ``mine.crop``, no jitter, no flip. Several sources: one epoch
    of their mix (``engine.sampler.SourceMix``: each source's share of ``sum(sizes)`` crops, spread evenly,
    its images in their own order), so every batch, and any ``mine.max_images`` of them, draws from every
    source in proportion."""
    labels, specs = cfg.model.labels, cfg.data.sources
    if len(specs) == 1:
        source = build_dataset(specs[0], labels)
    else:
        parts = [build_dataset(spec, labels) for spec in specs]
        mix = SourceMix.of([len(p) for p in parts], cfg.data.train_weights)
        source = Subset(ConcatDataset(parts), mix.in_order())
    return SeededTransform(source, train_transform(cfg.mine.crop, jitter=0, hflip=0))


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


def mining_plan(cfg: Config, dataset, device: torch.device | None = None) -> MiningPlan:
    """How ``famix mine`` walks ``dataset`` (:func:`source_set`): ``mine.max_images`` of it (all when null) in
    batches of ``mine.batch_size``; ``device``: where the PIN calls run (None: the run's device)."""
    m = cfg.mine
    device = device or resolve_device(cfg.run.device, current())
    return MiningPlan(
        images=plan_images(len(dataset), m.max_images),
        batch_size=m.batch_size,
        seed=cfg.run.seed,
        save_every=m.save_every,
        per_call=pin_batches(m, device),
        workers=cfg.data.workers,
    )


def patch_step(cfg: Config, device: torch.device):
    """The class-level mining step of ``cfg`` on ``device`` (``engine.mine.Step``): the batches of one call
    restyled patch by patch with ``cfg.model``'s CLIP in one PIN call; and the CLIP image tower's style
    channels."""
    m, seed = cfg.mine, cfg.run.seed
    settings = mining_settings(m)
    clip = build_clip(cfg.model.backbone, cfg.model.weights, device=device, seed=seed).requires_grad_(False)
    visual, embed, pool = clip.visual, TextEmbedder(clip), style_grid(clip.visual)
    _, amp = precision(cfg.run.amp, device)
    norm = normalization(cfg.model)
    channels_last = device.type == "cuda" and tower(visual).channels_last
    if channels_last:
        visual = visual.to(memory_format=torch.channels_last)

    def step(batches: list) -> list[MinedStyles]:
        pending = [  # (images, labels, the batch's generator: its patch choice and prompts)
            (
                normalize(images.to(device), *norm),
                labels.to(device),
                torch.Generator().manual_seed(sequence_seed(seed, b)),
            )
            for b, images, labels in batches
        ]
        try:
            mined = mine_batches(
                visual, embed, pending, cfg.model.labels.prompts, settings, pool, IGNORE_INDEX, amp,
                channels_last, m.cuda_graph,
            )  # fmt: skip
        except torch.OutOfMemoryError as error:
            raise torch.OutOfMemoryError(
                f"{error}\nstyle mining: {len(pending) * m.batch_size} crops per PIN call do not fit: set "
                f"mine.pin_crops lower (down to mine.batch_size={m.batch_size}); it changes only the speed"
            ) from error
        return [MinedStyles(*(t.cpu() for t in styles)) for styles in mined]

    return step, style_channels(visual)


def run(cfg: Config, progress: bool = True, say=print, fix: str = REFUSAL) -> StyleBank:
    """Mine ``cfg``'s bank (inputs checked first): a finished bank with the same record is returned at
    once, an interrupted one is resumed, a bank with another record is refused naming the changes
    (``fix``: what the refusal tells the user to do, in the calling command's own options). Under torchrun,
    call it inside ``distributed.session()``: every rank mines its share."""
    check_mine_inputs(cfg)
    record, path = mine_record(cfg), Path(cfg.style.bank)
    dataset = source_set(cfg)
    device = resolve_device(cfg.run.device, current())
    plan = mining_plan(cfg, dataset, device)
    with held(path, "style.bank", file=True, enabled=current().main):  # a second command on it refuses
        if path.is_file():
            bank = StyleBank.load(path)
            check_same(record, bank.record, path, fix)
            if bank.batches_done >= plan.batches:
                if current().main:
                    say(f"famix mine: {path} holds this bank, finished ({len(bank)} styles): nothing to do")
                return bank
        else:
            bank = None
        if current().main:
            say(f"famix mine: {describe(cfg.run.amp, record.settings['run']['amp'], device)}")
        step, channels = patch_step(cfg, device)
        if bank is None:
            # a bank of the 19 trainIds stores no label set, as before label sets
            labels = cfg.model.labels.to_dict() if cfg.model.classes is not None else None
            metadata = StyleBank.provenance(record.to_dict(), __version__, normalization(cfg.model), labels)
            bank = StyleBank(cfg.model.labels.names, channels, metadata=metadata)
        bank.check_compatible(channels, cfg.model.labels.names, path)
        return mine_pass(dataset, bank, path, plan, step, "mine", progress)


def status(cfg: Config, fix: str = REFUSAL) -> Status:
    """What :func:`run` would do with ``style.bank``: new, resume (after N of M batches), done, or refused
    (why)."""
    path = Path(cfg.style.bank)
    if not path.is_file():
        return Status(State.NEW)
    try:
        bank = StyleBank.load(path)
        check_same(mine_record(cfg), bank.record, path, fix)
        batches = mining_plan(cfg, source_set(cfg), torch.device("cpu")).batches  # the count: any device
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        return Status(State.REFUSED, str(e).splitlines()[0])
    done = bank.batches_done
    if done >= batches:
        return Status(State.DONE)
    return Status(State.RESUME, f"after {done} of {batches} batches")
