"""Pretrain the packaged tiny CLIP on captioned crops of the synthetic world (``famix pretrain-tiny-clip``).

An open_clip ``CLIP`` of the family famix uses for real (ModifiedResNet image tower with attention pool,
transformer text tower, open_clip tokenizer) learns contrastively from crops of scenes in all 12 styles.
Captions name the crop's style and/or dominant (or a present) class; since a batch repeats (style, class)
pairs, each image has every caption it satisfies as a positive (multi-positive symmetric soft cross-
entropy). Everything random comes from explicit generators keyed by ``seed``, so a run is reproducible on
the same machine and thread count.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from famix.data.captions import crop_images, make_captions, render_world, sample_crops, targets
from famix.engine.zero_shot import zero_shot_accuracy
from famix.models.clip import build_clip, clip_preprocess_size, get_clip_config

__all__ = ["multi_positive_loss", "pretrain_tiny_clip", "save_clip_fp16", "zero_shot_accuracy"]

WEIGHTS_NAME = "tiny-clip.safetensors"


def multi_positive_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Symmetric soft cross-entropy: logits and 0/1 target [images, captions]; each row (image -> text)
    and column (text -> image) spreads its target mass evenly over its positives."""
    i2t = -(target / target.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    t2i = -(target / target.sum(0, keepdim=True) * F.log_softmax(logits, 0)).sum(0).mean()
    return (i2t + t2i) / 2


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # As open_clip's trainer: no decay on gains, biases, norms and the temperature.
    decay, rest = [], []
    for name, p in model.named_parameters():
        no_decay = p.ndim < 2 or "bn" in name or "ln" in name or "logit_scale" in name
        (rest if no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def save_clip_fp16(model: torch.nn.Module, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``model``'s state dict as safetensors with floating tensors in fp16 (halves the file; famix
    loads it back in fp32)."""
    import safetensors.torch

    sd = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")  # unused in eval, and build_clip tolerates their absence
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(sd, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return path


def train_step(model, opt, world, rng, batch: int, focus: float, size: int) -> float:
    """One contrastive step on a fresh batch of crops and captions; returns the loss."""
    crops = sample_crops(world, rng, batch, focus=focus)
    images = crop_images(world, crops, size).contiguous(memory_format=torch.channels_last)
    captions = make_captions(crops, rng)
    tokens = open_clip.tokenize(captions.texts, model.context_length)
    img = F.normalize(model.encode_image(images), dim=-1)
    txt = F.normalize(model.encode_text(tokens), dim=-1)
    loss = multi_positive_loss(model.logit_scale.exp() * img @ txt.T, targets(crops, captions))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
    return float(loss.detach())


def pretrain_tiny_clip(
    out_dir: str | Path,
    steps: int = 1500,
    batch: int = 128,
    seed: int = 0,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    scenes: int = 9600,
    focus: float = 0.5,
    config: str = "tiny-clip",
    threads: int | None = None,
    eval_images: int = 2400,
    log_every: int = 50,
    progress: bool = True,
) -> dict:
    """Pretrain a CLIP of ``config`` (a famix backbone name or a .json path) from scratch.

    ``scenes`` scenes (scene i in style i % 12, seeds from the "train" range) are rendered once at 128 px;
    each step draws ``batch`` crops (a share ``focus`` tight around a class), resizes them to the CLIP
    input size and captions them. AdamW with a one-cycle schedule peaking at ``lr``. ``threads`` sets
    torch's CPU threads (results are bit-reproducible only at equal thread counts). Writes ``out_dir``/
    tiny-clip.safetensors (fp16) and pretrain.json (settings, loss per step, timings, zero-shot accuracy
    of the saved fp16 weights on ``eval_images`` fresh scenes; 0 skips it) and returns that record.
    """
    from tqdm import tqdm

    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    world = render_world(scenes, seed, "train", progress=progress)
    t_render = time.perf_counter() - t0

    model = build_clip(config, seed=seed).train().to(memory_format=torch.channels_last)
    size = clip_preprocess_size(model)
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng([int(seed), 0xC11B])  # the data stream: crops, flips, captions
    losses = []
    bar = tqdm(range(steps), desc="pretrain tiny CLIP", disable=not progress)
    for step in bar:
        losses.append(train_step(model, opt, world, rng, batch, focus, size))
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-log_every:]):.3f}")
    t_train = time.perf_counter() - t0 - t_render

    meta = {"config": config, "seed": seed, "steps": steps, "batch": batch}
    path = save_clip_fp16(model, out_dir / WEIGHTS_NAME, meta)
    record = {
        "weights": str(path),
        "settings": {**meta, "lr": lr, "weight_decay": weight_decay, "scenes": scenes, "focus": focus},
        "clip_config": get_clip_config(config),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
        },
        "seconds": {"render": round(t_render, 1), "train": round(t_train, 1)},
        "logit_scale": round(float(model.logit_scale.exp()), 2),
        "loss": [round(v, 4) for v in losses],
    }
    if eval_images:
        t1 = time.perf_counter()
        shipped = build_clip(config, weights=str(path))  # measure what was saved (fp16 round trip)
        record["zero_shot"] = {
            "uniform": zero_shot_accuracy(shipped, eval_images, seed),
            "training_crops": zero_shot_accuracy(shipped, eval_images, seed, focus=focus, imagenet=False),
        }
        record["seconds"]["eval"] = round(time.perf_counter() - t1, 1)
    (out_dir / "pretrain.json").write_text(json.dumps(record, indent=1))
    return record
