"""``famix train``: FAMix training (method.md section 5) with DDP, AMP, exact resume and validation."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from famix.config import Config, save_config
from famix.data.datasets import Normalized, SeededTransform, build_dataset
from famix.data.transforms import source_transform
from famix.engine.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from famix.engine.distributed import barrier, cleanup, init_distributed, resolve_device
from famix.engine.evaluate import evaluate
from famix.engine.sampler import StreamSampler
from famix.models.build import build_segmenter
from famix.style.bank import StyleBank
from famix.style.mixing import LocalStyleMixer

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def build_optimizer(model, cfg: Config):
    """SGD with the head at lr and trainable backbone parameters at lr * backbone_lr_mult; poly schedule."""
    t = cfg.train
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": model.classifier.parameters(), "lr": t.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": t.lr * t.backbone_lr_mult})
    optimizer = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    floors = [t.min_lr / g["lr"] for g in optimizer.param_groups]
    poly = [lambda s, f=f: max((1 - min(s, t.iterations) / t.iterations) ** t.poly_power, f) for f in floors]
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, poly)


def build_mixer(cfg: Config, model, device) -> LocalStyleMixer | None:
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
        bank.check_compatible(model.low_channels, cfg.model.class_names, s.bank)
        packed = bank.packed(device)
    generator = torch.Generator(device=device)
    return LocalStyleMixer(s.mix, s.grid, s.beta, cfg.model.num_classes, packed, generator)


def step_seed(seed: int, step: int, rank: int) -> int:
    """All randomness of a step (dropout, style draws) is re-seeded from (seed, step, rank): exact resume."""
    return (seed * 1_000_003 + step * 7919 + rank) % (2**63)


def train(cfg: Config) -> dict:
    """Train (or resume from ``<out>/latest.pt``) and return the final metrics."""
    info = init_distributed(cfg.train.device)
    device = resolve_device(cfg.train.device, info)
    t, out = cfg.train, Path(cfg.train.out)
    model = build_segmenter(cfg.model, seed=t.seed).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mixer = build_mixer(cfg, model, device)
    optimizer, scheduler = build_optimizer(model, cfg)
    amp_dtype = AMP_DTYPES[t.amp] if device.type == "cuda" else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    start, best = 0, -1.0
    if (out / "latest.pt").is_file():
        ckpt = load_checkpoint(out / "latest.pt")
        load_model_state(model, ckpt["model_state"], str(out / "latest.pt"))
        optimizer.load_state_dict(ckpt["optimizer_state"])
        scheduler.load_state_dict(ckpt["scheduler_state"])
        scaler.load_state_dict(ckpt["scaler_state"])
        start, best = ckpt["cur_itrs"], ckpt["best_score"]
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    loader = make_train_loader(cfg, info, start)
    net = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if info.enabled
        else model
    )
    logger = MetricsLogger(out, info.main)
    model.train()
    bar = tqdm(total=t.iterations, initial=start, desc="train", disable=not info.main, dynamic_ncols=True)
    running, tick, last_log = torch.zeros((), device=device), time.perf_counter(), start
    last = min(t.iterations, t.stop_after or t.iterations)
    for step, (images, labels) in zip(range(start + 1, last + 1), loader, strict=False):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if t.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        torch.manual_seed(step_seed(t.seed, step, info.rank))
        if mixer is not None:
            mixer.generator.manual_seed(step_seed(t.seed, step, info.rank))
        running += train_step(net, mixer, images, labels, optimizer, scaler, amp_dtype, t.label_smoothing)
        scheduler.step()
        bar.update(1)
        validate_now = step % t.val_interval == 0 or step == last
        if step % t.log_interval == 0 or validate_now:
            mean_loss = running.item() / (step - last_log)
            running.zero_()
            if not math.isfinite(mean_loss):
                raise FloatingPointError(
                    f"non-finite training loss near step {step}; stopped without saving, the last good "
                    f"checkpoint ({out / 'latest.pt'}) is kept. Lower train.lr or set train.amp=off, "
                    "then resume."
                )
            now = time.perf_counter()
            logger.log(step=step, loss=mean_loss, lr=scheduler.get_last_lr()[0], seconds=round(now - tick, 3))
            tick, last_log = now, step
            bar.set_postfix(loss=f"{mean_loss:.3f}")
        if validate_now:
            best = validate_and_save(
                cfg, model, optimizer, scheduler, scaler, step, best, device, amp_dtype, info, logger
            )
    bar.close()
    barrier()
    cleanup()
    return {"step": last, "best_score": best}


def train_step(net, mixer, images, labels, optimizer, scaler, amp_dtype, label_smoothing) -> torch.Tensor:
    """One SGD step: images [B, 3, H, W], labels [B, H, W]; layer1 features restyled by ``mixer``.
    Returns the detached loss (no host synchronisation)."""
    restyle = (lambda f: mixer(f, labels)) if mixer is not None else None
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        logits = net(images, restyle=restyle)  # [B, K, H, W]
        loss = F.cross_entropy(logits.float(), labels, ignore_index=255, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def make_train_loader(cfg: Config, info, start: int) -> DataLoader:
    d = cfg.data
    # The augmentation recipe depends on the source (SYNTHIA differs), named by the spec's first field.
    transform = source_transform(d.train.split(":")[0], d.crop, d.jitter, d.hflip)
    dataset = SeededTransform(build_dataset(d.train, d.synthetic_size), transform)
    sampler = StreamSampler(
        len(dataset), d.batch_size, cfg.train.seed, info.rank, info.world_size, start, cfg.train.iterations
    )
    return DataLoader(
        dataset,
        batch_size=d.batch_size,
        sampler=sampler,
        num_workers=d.workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        persistent_workers=d.workers > 0,
    )


def validate_and_save(cfg, model, optimizer, scheduler, scaler, step, best, device, amp_dtype, info, logger):
    """Rank 0: evaluate on the val sets, write ``latest.pt`` and (if improved) ``best.pt`` atomically."""
    if info.main:
        scores = {}
        for spec in cfg.data.val:
            loader = DataLoader(Normalized(build_dataset(spec, cfg.data.synthetic_size)), batch_size=1)
            result = evaluate(
                model,
                loader,
                cfg.model.num_classes,
                device,
                amp_dtype=amp_dtype,
                progress=False,
                reduce=False,
            )
            scores[spec] = result.miou
        score = sum(scores.values()) / len(scores) if scores else -1.0
        if scores:
            logger.log(step=step, val=scores, val_mean=score)
        state = dict(
            model_state=model.state_dict(),
            optimizer_state=optimizer.state_dict(),
            scheduler_state=scheduler.state_dict(),
            scaler_state=scaler.state_dict(),
            cur_itrs=step,
            config=cfg.to_dict(),
        )
        out = Path(cfg.train.out)
        if score > best or not (out / "best.pt").is_file():
            best = max(score, best)
            save_checkpoint(out / "best.pt", best_score=best, **state)
        save_checkpoint(out / "latest.pt", best_score=best, **state)
    barrier()
    model.train()
    return best


class MetricsLogger:
    """JSON lines in ``<out>/metrics.jsonl`` and, if installed, TensorBoard scalars (rank 0 only)."""

    def __init__(self, out: Path, enabled: bool):
        self.enabled, self.path, self.tb = enabled, out / "metrics.jsonl", None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"))
            except ImportError:
                pass

    def log(self, **record) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])
