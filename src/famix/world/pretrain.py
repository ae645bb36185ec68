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
import os
import platform
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from famix.io import save_safetensors
from famix.models.clip import build_clip, clip_preprocess_size, get_clip_config
from famix.progress import progress_bar
from famix.world.captions import KIND_SHARES, crop_images, make_captions, render_world, sample_crops, targets
from famix.world.zero_shot import zero_shot_accuracy

__all__ = ["multi_positive_loss", "pretrain_tiny_clip", "save_clip_fp16", "zero_shot_accuracy"]


def asset_name(config: str) -> str:
    """The file stem of a pretrained config's weights and card: "tiny-clip", "tiny-vit-clip", or a .json's
    stem."""
    return Path(config).stem


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
    sd = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")  # unused in eval, and build_clip tolerates their absence
    }
    return save_safetensors(sd, path, {k: str(v) for k, v in (metadata or {}).items()})


def _cpu_name() -> str:
    try:  # Linux names the CPU model here; platform.processor() is often empty there
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train_step(model, opt, world, rng, batch: int, focus: float, size: int, kinds=KIND_SHARES) -> float:
    """One contrastive step on a fresh batch of crops and captions; returns the loss."""
    crops = sample_crops(world, rng, batch, focus=focus)
    images = crop_images(world, crops, size).contiguous(memory_format=torch.channels_last)
    captions = make_captions(crops, rng, kinds)
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
    steps: int = 1100,
    batch: int = 128,
    seed: int = 0,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    scenes: int = 9600,
    focus: float = 0.25,
    kinds: tuple[float, ...] = KIND_SHARES,
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
    torch's CPU threads (results are bit-reproducible only at equal thread counts). Writes to ``out_dir``
    <name>.safetensors (fp16; <name> = ``asset_name(config)``), a model card <name>.md and pretrain.json
    (settings, loss per step, timings, zero-shot accuracy of the saved fp16 weights on ``eval_images``
    fresh scenes; 0 skips it) and returns that record.
    """
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
    bar = progress_bar(range(steps), desc="pretrain tiny CLIP", disable=not progress)
    for step in bar:
        losses.append(train_step(model, opt, world, rng, batch, focus, size, kinds))
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-log_every:]):.3f}")
    t_train = time.perf_counter() - t0 - t_render

    meta = {"config": config, "seed": seed, "steps": steps, "batch": batch}
    path = save_clip_fp16(model, out_dir / f"{asset_name(config)}.safetensors", meta)
    record = {
        "weights": str(path),
        "file_bytes": path.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "settings": {
            **meta,
            "lr": lr,
            "weight_decay": weight_decay,
            "scenes": scenes,
            "focus": focus,
            "kinds": kinds,
        },
        "clip_config": get_clip_config(config),
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
        },
        "seconds": {"render": round(t_render, 1), "train": round(t_train, 1)},
        "logit_scale": round(float(model.logit_scale.detach().exp()), 2),
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
    (out_dir / f"{asset_name(config)}.md").write_text(model_card(record))
    return record


def model_card(record: dict, every: int = 100) -> str:
    """A markdown model card for a ``pretrain_tiny_clip`` record (settings, loss curve, zero-shot)."""
    s, sec = record["settings"], record["seconds"]
    name = asset_name(s.get("config", "tiny-clip"))
    vit = record["clip_config"]["vision_cfg"].get("patch_size")
    tower = (
        f"VisionTransformer image tower (patch {vit}, class-token pooling)"
        if vit
        else "ModifiedResNet image tower with attention pool"
    )
    lines = [
        f"# {name}: a CLIP that knows the synthetic world's styles",
        "",
        f"An open_clip `CLIP` ({tower}, transformer text tower, "
        "open_clip tokenizer) pretrained from scratch by `famix.world.pretrain` on captioned crops of "
        "famix's synthetic street world in all 12 styles. It stands in for OpenAI's CLIP in the offline "
        "demo.",
        "",
        f"## Config (`src/famix/assets/{name}.json`, open_clip `CLIP` arguments)",
        *(f"- {k}: `{json.dumps(v)}`" for k, v in record["clip_config"].items()),
        "",
        f"Parameters: {record.get('parameters', '?')}; weights stored in fp16 "
        f"({record.get('file_bytes', 0) / 1e6:.1f} MB). Learned temperature: {record['logit_scale']}.",
        "",
        "## Training",
        f"- seed {s['seed']}, {s['steps']} steps, batch {s['batch']}, AdamW (lr {s['lr']}, one-cycle, "
        f"weight decay {s['weight_decay']}), multi-positive symmetric soft cross-entropy",
        f'- data: {s["scenes"]} scenes from the "train" seed range, 128 px, scene i in style i % 12; '
        f"crops: {100 * s['focus']:.0f} % tight (20-50 % of the side, centred on a random class), the rest "
        "uniform (42-100 %), resized to 64 px, half flipped; caption kinds (both, style, class, present) "
        f"drawn with probabilities {list(s['kinds'])}",
        f"- wall time: render {sec['render']} s, train {sec['train']} s"
        + (f", evaluation {sec['eval']} s" if "eval" in sec else "")
        + "; {cpu} ({cores} cores), {threads} torch thread(s), torch {torch}, open_clip {open_clip}".format(
            **record["machine"]
        ),
        "",
        "## Loss (mean over each window of steps)",
        "| steps | loss |",
        "|---|---|",
    ]
    loss = record["loss"]
    for a in range(0, len(loss), every):
        lines.append(f"| {a}-{min(a + every, len(loss)) - 1} | {np.mean(loss[a : a + every]):.3f} |")
    for sample, z in record.get("zero_shot", {}).items():
        lines += [
            "",
            f"## Zero-shot accuracy (%), {z['n_images']} fresh scenes, {sample.replace('_', ' ')} "
            f"(focus {z['focus']})",
            "| style (12-way) | dominant class (13-way) | style + class (156-way) | majority class |"
            + (" 156-way, mining's 80-template text |" if "joint_imagenet80" in z else ""),
            "|---|---|---|---|" + ("---|" if "joint_imagenet80" in z else ""),
            f"| {z['style']} | {z['class']} | {z['joint']} | {z['class_majority']} |"
            + (f" {z['joint_imagenet80']} |" if "joint_imagenet80" in z else ""),
            "",
            "Per style: " + ", ".join(f"{k} {v}" for k, v in z["per_style"].items()),
            "",
            "Per dominant class (accuracy, count): "
            + ", ".join(f"{k} {v['acc']} ({v['n']})" for k, v in z["per_class"].items()),
            "",
            "Dominant class by its lead over the runner-up (share of the crop's pixels; accuracy, count): "
            + ", ".join(f"{k} {v['acc']} ({v['n']})" for k, v in z.get("class_by_margin", {}).items()),
        ]
    lines += [
        "",
        "## Retrain",
        "```",
        f"famix pretrain-tiny-clip --out DIR --config {name} --steps {s['steps']} --seed {s['seed']} "
        f"--threads {record['machine']['threads']}",
        "```",
        "",
    ]
    return "\n".join(lines)
