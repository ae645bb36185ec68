"""FAMix training (method.md section 5) with DDP, AMP, exact resume and validation: the loop and step that
``famix train`` runs (and ``famix adapt``'s head fine-tuning through it; the benchmarks time its step).
Which run a folder holds, and whether it is finished, is the stage's (:mod:`famix.stages.train`)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from famix.config import Config, save_config
from famix.data.datasets import SeededSources, SeededTransform, build_dataset
from famix.data.label_sets import LabelSet
from famix.data.specs import parse_spec
from famix.data.trainids import IGNORE_INDEX
from famix.data.transforms import color_jitter, normalize, source_transform
from famix.engine.amp import amp_dtype, autocast
from famix.engine.checkpoint import load_model_state, save_checkpoint
from famix.engine.checks import check_bank_classes, check_bank_normalization
from famix.engine.distributed import barrier, current, require_session, resolve_device
from famix.engine.evaluate import evaluate_specs
from famix.engine.inference import eval_mode, predict_ids
from famix.engine.interrupt import Interrupted, any_rank, stop_requests
from famix.engine.loggers import MetricsLogger, dataset_name
from famix.engine.loss import SegmentationLoss
from famix.engine.ood import KEY as REFERENCE_KEY
from famix.engine.ood import reference_entry
from famix.engine.runs import KEY, RunRecord
from famix.engine.sampler import stream_sampler
from famix.engine.seeds import mixer_seed, step_seed
from famix.engine.visualize import overlay, with_legend
from famix.io import atomic_link, remove_stale_temps
from famix.models.build import build_segmenter, normalization
from famix.normalization import OPENAI_NORMALIZATION
from famix.progress import progress_bar
from famix.settings import InferenceSettings
from famix.style.bank import StyleBank
from famix.style.mixing import LocalStyleMixer


def with_normalization(cfg: Config) -> Config:
    """``cfg`` with ``model.mean`` / ``model.std`` resolved (``models.clip.clip_normalization``: given values,
    an open_clip tag's, else OpenAI's): what a run's config.yaml and checkpoints store, so every later stage
    normalises its inputs as the model was trained."""
    n = normalization(cfg.model)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, mean=list(n.mean), std=list(n.std)))


def build_optimizer(model, cfg: Config):
    """SGD with the head at lr and trainable backbone parameters at lr * backbone_lr_mult; poly schedule."""
    t = cfg.train
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": list(model.head_parameters()), "lr": t.lr}]  # DeepLabv3+ (and a ViT's neck)
    if backbone:
        groups.append({"params": backbone, "lr": t.lr * t.backbone_lr_mult})
    optimizer = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    floors = [t.min_lr / g["lr"] for g in optimizer.param_groups]
    poly = [lambda s, f=f: max((1 - min(s, t.iterations) / t.iterations) ** t.poly_power, f) for f in floors]
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, poly)


def build_mixer(cfg: Config, model, device) -> LocalStyleMixer | None:
    """The style mixer of ``cfg.style`` (None for ``style.mix=none``); loads the bank, checks it fits."""
    s = cfg.style
    if s.mix == "none":
        return None
    packed = None
    if s.mix in ("famix", "augment"):
        if not s.bank:
            raise ValueError(
                f"style.mix={s.mix} needs a style bank: set style.bank=PATH (made by `famix mine`) "
                "or choose style.mix=mixstyle|none"
            )
        bank = StyleBank.load(s.bank)
        bank.check_compatible(model.style_channels, cfg.model.labels.names, s.bank)
        check_bank_classes(bank, cfg.model.labels, s.bank)
        check_bank_normalization(bank, model.normalization, s.bank)
        made_by = (bank.record or {}).get("kind")
        if s.mix == "famix" and made_by == "adapt-styles":
            raise ValueError(
                f"style bank {s.bank} holds `famix adapt`'s image-level styles of one target, not per-class "
                "styles: style.mix=famix draws each patch's style from its class; mine a bank with `famix "
                "mine`, or use style.mix=augment"
            )
        packed = bank.packed(device)
    generator = torch.Generator(device=device)
    return LocalStyleMixer(
        s.mix, s.grid, s.beta, len(cfg.model.labels), packed, generator, IGNORE_INDEX, model.style_relu
    )


def train(cfg: Config, record: RunRecord, resume: dict | None = None, init_state: dict | None = None) -> dict:
    """Train (or go on from ``resume``, the run's ``latest.pt``: ``stages.train.open_run``) and return the
    final metrics. ``record`` (``stages.train.train_record``) is stored in every checkpoint; ``init_state``:
    weights to start from instead of ``cfg.model``'s (a trained segmenter that ``famix adapt`` fine-tunes).
    Under torchrun, call it inside ``distributed.session()``.
    """
    info = current()
    require_session(info, "training")
    device = resolve_device(cfg.run.device, info)
    cfg = with_normalization(cfg)
    t, out = cfg.train, Path(cfg.train.out)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed crop size: let cuDNN pick its kernels
    model = build_segmenter(cfg.model, seed=cfg.run.seed).to(device)
    if init_state is not None:
        load_model_state(model, init_state, "the initial weights")
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mixer = build_mixer(cfg, model, device)
    optimizer, scheduler = build_optimizer(model, cfg)
    amp = amp_dtype(cfg.run.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    criterion = SegmentationLoss(t.label_smoothing, IGNORE_INDEX)
    start, best = 0, -1.0
    if resume is not None:
        load_model_state(model, resume["model_state"], str(out / "latest.pt"))
        optimizer.load_state_dict(resume["optimizer_state"])
        scheduler.load_state_dict(resume["scheduler_state"])
        scaler.load_state_dict(resume["scaler_state"])
        start, best = resume["cur_itrs"], resume["best_score"]
    logger = MetricsLogger(out, info.main, cfg.run.loggers, cfg.to_dict())
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("latest.pt", "best.pt", "config.yaml", "metrics.jsonl"):
            remove_stale_temps(out / name)
        logger.truncate(start)  # lines logged after the checkpoint would be logged again
        save_config(cfg, out / "config.yaml")
    barrier()
    loader = make_train_loader(cfg, info, start)
    net = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if info.enabled
        else model
    )
    if t.compile:
        net = torch.compile(net, backend=t.compile)
    parts = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)  # saved in checkpoints
    model.train()
    bar = progress_bar(total=t.iterations, initial=start, desc="train", disable=not info.main)
    last = min(t.iterations, t.stop_after or t.iterations)
    running, tick, last_log = torch.zeros((), device=device), time.perf_counter(), start
    with stop_requests() as asked, contextlib.closing(logger):  # Ctrl-C / SIGTERM: stop at a step's end
        for step, (images, labels, jitter) in zip(range(start + 1, last + 1), loader, strict=False):
            images = images.to(device, non_blocking=True)
            images = prepare_images(images, jitter, t.channels_last, model.normalization)  # [B, 3, H, W]
            labels = labels.to(device, non_blocking=True).long()  # [B, H, W]
            torch.manual_seed(step_seed(cfg.run.seed, step, info.rank))
            if mixer is not None:
                mixer.generator.manual_seed(mixer_seed(cfg.run.seed, step, info.rank))
            running += train_step(net, mixer, images, labels, optimizer, scaler, amp, criterion)
            scheduler.step()
            bar.update(1)
            validate_now = step % t.val_interval == 0 or step == last
            if step % t.log_interval == 0 or validate_now:
                mean_loss = running.item() / (step - last_log)
                running.zero_()
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(f"non-finite training loss near step {step}; {_kept(out)}")
                now = time.perf_counter()
                logger.log(
                    step=step, loss=mean_loss, lr=scheduler.get_last_lr()[0], seconds=round(now - tick, 3)
                )
                tick, last_log = now, step
                bar.set_postfix(loss=f"{mean_loss:.3f}")
            score = None  # mIoU % at a validation step; -1 when there is nothing to validate on
            if validate_now:
                score = validate(cfg, model, device, amp, info, logger, step) if cfg.data.val else -1.0
            saved = validate_now or step % t.ckpt_interval == 0
            if saved:
                best = save_checkpoints(cfg, parts, step, best, score, info, record)
            # under DDP every rank stops at the same step: the ranks agree at log steps (one small all-reduce)
            check = not info.enabled or step % t.log_interval == 0
            if check and step < last and any_rank(asked()):
                if not saved:
                    best = save_checkpoints(cfg, parts, step, best, None, info, record)
                bar.close()
                raise Interrupted(
                    f"stopped at step {step} of {t.iterations}; {out / 'latest.pt'} holds it: run the same "
                    "command to resume"
                )
    bar.close()
    barrier()
    return {"step": last, "best_miou": best}


def _kept(out: Path) -> str:
    """What a run stopped by a non-finite loss leaves, and what to do."""
    latest = out / "latest.pt"
    if latest.is_file():
        kept = f"stopped without saving; the last good checkpoint, {latest}, is kept"
    else:
        kept = f"stopped without saving (no checkpoint in {out} yet)"
    return f"{kept}. Lower train.lr or set run.amp=off, then run the same command again"


def train_step(net, mixer, images, labels, optimizer, scaler, amp_dtype, criterion) -> torch.Tensor:
    """One SGD step: images [B, 3, H, W], labels [B, H, W]; layer1 features restyled by ``mixer``.
    Returns the detached loss (no host synchronisation)."""
    restyle = (lambda f: mixer(f, labels)) if mixer is not None else None
    with autocast(images.device, amp_dtype):
        logits = net(images, restyle=restyle)  # [B, K, H, W]
        loss = criterion(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def prepare_images(
    images: torch.Tensor,
    jitter: torch.Tensor,
    channels_last: bool,
    normalization: tuple[Sequence[float], Sequence[float]] = OPENAI_NORMALIZATION,
) -> torch.Tensor:
    """A training batch on the device: uint8 [B, 3, H, W] and per-image jitter parameters [B, 6] ->
    colour-jittered float32 [B, 3, H, W] normalised with ``normalization`` (the model's (mean, std);
    channels_last if asked)."""
    x = normalize(color_jitter(images, jitter), *normalization)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def make_source_dataset(
    spec: str, crop: int, jitter: float, hflip: float, labels: LabelSet | None = None
) -> SeededTransform:
    """The training view of a source dataset (read through ``labels``): items ``(index, seed)`` ->
    augmented (image, label)."""
    # The augmentation recipe depends on the source (SYNTHIA differs), named by the spec's first field.
    source = build_dataset(spec, labels)
    return SeededTransform(source, source_transform(parse_spec(spec).name, crop, jitter, hflip))


def make_train_loader(cfg: Config, info, start: int) -> DataLoader:
    """The training batches of ``cfg`` from step ``start`` on, this rank's share: one source's stream, or
    several sources' in their shares (``engine.sampler``), each source with its own augmentation recipe."""
    d = cfg.data
    sources = [make_source_dataset(s, d.crop, d.jitter, d.hflip, cfg.model.labels) for s in d.sources]
    dataset = sources[0] if len(sources) == 1 else SeededSources(sources)
    sampler = stream_sampler(
        [len(s) for s in sources], d.train_weights, d.batch_size, seed=cfg.run.seed, rank=info.rank,
        world_size=info.world_size, start_step=start, steps=cfg.train.iterations,
    )  # fmt: skip
    return DataLoader(
        dataset,
        batch_size=d.batch_size,
        sampler=sampler,
        num_workers=d.workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        persistent_workers=d.workers > 0,
        prefetch_factor=4 if d.workers > 0 else None,
    )


def validate(cfg: Config, model, device, amp, info, logger, step: int) -> float | None:
    """Rank 0 evaluates ``cfg.data.val`` and logs the mIoUs (%); returns their mean (None on other ranks)."""
    score = None
    if info.main:
        t = cfg.train
        tta = InferenceSettings(flip=t.val_flip, scales=tuple(t.val_scales) if t.val_scales else None)
        results = evaluate_specs(
            model,
            cfg.data.val,
            len(cfg.model.labels),
            device,
            tta=tta,
            amp_dtype=amp,
            batch_size=cfg.data.batch_size,
            workers=cfg.data.workers,
            progress=False,
            reduce=False,
            labels=cfg.model.labels,
        )
        scores = {spec: r.miou for spec, r in results.items()}
        score = sum(scores.values()) / len(scores)
        for spec, r in results.items():  # one line per dataset as it comes, above the progress bar
            tqdm.write(f"step {step}: {dataset_name(spec)}: mIoU {r.miou:.2f} %")
        logger.log(step=step, val_miou=scores, val_mean_miou=score)
        if logger.wants_images:
            logger.log_images(step, previews(cfg, model, device, amp))
    barrier()
    return score


PREVIEWS = 2  # validation images per dataset shown to the trackers, with their predictions


def previews(cfg: Config, model, device, amp) -> dict[str, np.ndarray]:
    """The first :data:`PREVIEWS` images of each validation dataset with the model's prediction blended over
    them and the legend of the classes it shows: ``{"val/<dataset>/<i>": uint8 [H + legend, W, 3]}``."""
    labels, out = cfg.model.labels, {}
    with eval_mode(model), torch.inference_mode():
        for spec in cfg.data.val:
            dataset = build_dataset(spec, labels)
            for i in range(min(PREVIEWS, len(dataset))):
                image = dataset[i][0]  # uint8 [3, H, W]
                ids = predict_ids(model, image[None], device, amp_dtype=amp)[0]  # [H, W]
                picture = overlay(image, ids, colours=labels.palette(), num_classes=len(labels))
                out[f"val/{dataset_name(spec)}/{i}"] = with_legend(picture, ids, labels)
    return out


def save_checkpoints(cfg, parts: dict, step, best, score, info, record: RunRecord) -> float:
    """Rank 0 writes ``latest.pt`` and, at a validation step (``score`` not None) that beats ``best`` or
    finds no ``best.pt``, ``best.pt``, atomically. With nothing to validate on (``score`` -1) every
    validation step's model is the best known, so best.pt follows it (the last one: the final model).
    When both hold the same step they are one file (a hard link: a finished run is not stored twice; the
    next ``latest.pt`` is a new file, so ``best.pt`` keeps its step).
    A validation step's checkpoint also holds the source's style reference (``engine.ood``: famix
    diagnose's out-of-domain score reads it). ``parts``: model, optimizer, scheduler, scaler. Returns the
    best score (mIoU %, -1: none measured)."""
    if info.main:
        state = {f"{name}_state": part.state_dict() for name, part in parts.items()}
        state.update(cur_itrs=step, config=cfg.to_dict(), **{KEY: record.to_dict()})
        if score is not None:  # famix diagnose's out-of-domain reference, of the weights saved
            datasets = [build_dataset(spec, cfg.model.labels) for spec in cfg.data.sources]
            state[REFERENCE_KEY] = reference_entry(parts["model"], datasets)
        out = Path(cfg.train.out)
        unmeasured = score is not None and score < 0
        better = score is not None and (score > best or unmeasured or not (out / "best.pt").is_file())
        best = max(score, best) if better else best
        save_checkpoint(out / "latest.pt", best_score=best, **state)
        if better:
            atomic_link(out / "latest.pt", out / "best.pt")
    barrier()
    return best
