"""``famix adapt``: prompt-driven zero-shot adaptation (PODA, ICCV 2023) of a trained segmenter.

For each target description ("driving at night"), in ``<out>/<slug>/``:

1. ``styles.safetensors``: one style per source crop, mined by image-level PIN
   (``famix.style.adapt.image_pin``) toward the description's CLIP text embedding. The bank keeps every
   style under ``"ignore"`` (the class lists stay empty), so the mixer, finding no class style, draws from
   them for every image; its metadata records the description, the source and the PIN settings. It is
   saved every ``save_every`` batches: an interrupted pass resumes where it stopped.
2. ``latest.pt`` (and ``best.pt``, ``config.yaml``, ``metrics.jsonl``: a ``famix train`` run started
   from the checkpoint's weights): the segmenter fine-tuned on source crops whose style maps (ResNet
   layer1, ViT patch embedding) are restyled by those styles (``style.mix=augment``, grid 1: each image's
   whole map takes a mined style, full replacement), the HEAD only (freeze preset ``backbone``), for
   ``iterations`` SGD steps (default 2000, poly schedule, head lr 0.01: our defaults, PODA's exact
   settings were not checked offline). It is a checkpoint like any other (``famix eval`` / ``predict``
   load it; its config says ``freeze: backbone``), written every ``ckpt_interval`` steps too: an
   interrupted run resumes from it, a folder made with other settings is refused (as ``famix train``).

One model per target: the head is fitted to one target's feature statistics; a model adapted to several
descriptions at once is FAMix-style generalisation, not PODA's adaptation, and would blur the comparison.

Which CLIP: the styles live in the *segmenter's* style-map space (its own frozen stem and layer1, or a
ViT's patch embedding, make the features); CLIP (the checkpoint's backbone, weights from ``clip_weights`` as
``famix mine``) gives the text embedding and the tail that embeds the restyled maps
(``famix.models.towers.style_tail``). With the CLIP weights the model was trained from, those layers are the
same tensors; otherwise a warning says so.
One process (no torchrun).
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from famix import __version__
from famix.config import (
    Config,
    DataConfig,
    RunConfig,
    StyleConfig,
    TrainConfig,
    changed_settings,
    from_dict,
)
from famix.data.datasets import SeededTransform, build_dataset
from famix.data.labels import IGNORE_INDEX
from famix.data.transforms import normalize, train_transform
from famix.engine.checkpoint import load_checkpoint, load_segmenter
from famix.engine.distributed import resolve_device
from famix.engine.seeds import item_seed
from famix.engine.train import train
from famix.models.clip import build_clip, weights_fingerprint
from famix.models.towers import style_grid
from famix.progress import progress_bar
from famix.style.adapt import PIN_LR, PIN_STEPS, check_description, image_pin
from famix.style.bank import StyleBank
from famix.style.prompts import TextEmbedder


@dataclass(frozen=True)
class AdaptSettings:
    """What an adaptation computes, besides the target and the checkpoint (None: the checkpoint's value).

    iterations: head fine-tuning steps; lr: the head's SGD lr (poly schedule); steps, pin_lr:
    image-level PIN (``famix.style.adapt``); images: source crops mined (None: the whole source set, as
    PODA); crop, batch_size: source crops (None: the checkpoint's data.crop / data.batch_size).
    """

    iterations: int = 2000
    lr: float = 0.01
    steps: int = PIN_STEPS
    pin_lr: float = PIN_LR
    images: int | None = None
    crop: int | None = None
    batch_size: int | None = None
    seed: int = 0
    # what does not change the result: where and how often
    device: str = "auto"
    amp: str = "bf16"
    workers: int = 0
    ckpt_interval: int = 500
    save_every: int = 10  # mining: batches between saves of the partial bank

    def __post_init__(self) -> None:
        for name in ("iterations", "ckpt_interval", "steps", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"adapt {name}={getattr(self, name)}: give a number >= 1")


def slug(target: str) -> str:
    """The run folder name of a target description: "Driving at night!" -> "driving-at-night"."""
    return re.sub(r"[^a-z0-9]+", "-", target.lower()).strip("-") or "target"


def adapt(
    checkpoint: str | Path,
    targets: list[str],
    source_spec: str,
    out: str | Path,
    clip_weights: str | None = None,
    settings: AdaptSettings | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Adapt ``checkpoint`` to each target description with source crops of ``source_spec``: one model per
    target, ``<out>/<slug>/latest.pt`` (resumed if interrupted). Returns {target: checkpoint path}."""
    s = settings or AdaptSettings()
    if not targets:
        raise ValueError('give at least one target description (--target "driving at night")')
    folders = [slug(t) for t in targets]
    if len(set(folders)) != len(folders):
        raise ValueError(f"target descriptions {targets} share run folder names {folders}: make them differ")
    device = resolve_device(s.device)
    model, model_cfg = load_segmenter(checkpoint, device=device)
    stored = load_checkpoint(checkpoint).get("config", {})
    clip = build_clip(model_cfg.backbone, clip_weights, device=device, seed=0).requires_grad_(False)
    _check_style_layers(model, clip.visual, clip_weights)
    embed = TextEmbedder(clip)
    data = from_dict(stored.get("data", {}), DataConfig, "data.")
    data = dataclasses.replace(
        data,
        train=source_spec,
        val=[],
        crop=s.crop or data.crop,
        batch_size=s.batch_size or data.batch_size,
        workers=s.workers,
    )
    train_cfg = from_dict(stored.get("train", {}), TrainConfig, "train.")
    recorded = {  # everything besides the config sections that the adapted model depends on
        "target": None,
        "checkpoint": weights_fingerprint(str(checkpoint)),
        "clip": {"backbone": model_cfg.backbone, "weights": weights_fingerprint(clip_weights)},
        "pin": {"steps": s.steps, "lr": s.pin_lr, "images": s.images},
    }
    written = {}
    for target, folder in zip(targets, folders, strict=True):
        run = Path(out) / folder
        cfg = Config(
            model=dataclasses.replace(model_cfg, freeze="backbone", weights=None),
            data=data,
            style=StyleConfig(mix="augment", bank=str(run / "styles.safetensors"), grid=1),
            train=dataclasses.replace(
                train_cfg,
                out=str(run),
                iterations=s.iterations,
                lr=s.lr,
                stop_after=None,
                ckpt_interval=s.ckpt_interval,
                channels_last=device.type == "cuda",
                compile=None,
            ),
            run=RunConfig(seed=s.seed, device=s.device, amp=s.amp),
        )
        record = {**recorded, "target": target}
        check_description(target, getattr(clip, "context_length", 77))
        _mine_target(model, clip, embed, cfg, record, s, progress)
        written[target] = _fine_tune(checkpoint, cfg, record)
    return written


def _check_style_layers(model, visual, clip_weights) -> None:
    """Warn if the units of the segmenter that make its style map (ResNet stem and layer1, ViT patch
    embedding) are not those of the CLIP image tower used for the tail."""
    names = [name for name, _ in model.units()]
    site = model.style_site
    where = {id(m): n for n, m in model.backbone.named_modules()}
    early = [m for unit in names[: names.index(site) + 1] for m in model.unit_modules(unit)]
    theirs = {where[id(m)]: visual.get_submodule(where[id(m)]).state_dict() for m in early}
    ours = {where[id(m)]: m.state_dict() for m in early}
    if any(not torch.equal(t, theirs[n][k].to(t.device)) for n, sd in ours.items() for k, t in sd.items()):
        warnings.warn(
            f"the checkpoint's style-map layers differ from CLIP weights {clip_weights or '(random)'}: the "
            "styles are embedded by a CLIP tail trained on other features; pass the CLIP weights the model "
            "was trained from (--weights)",
            stacklevel=3,
        )


def _mine_target(model, clip, embed, cfg: Config, record: dict, s: AdaptSettings, progress: bool) -> None:
    """Write ``cfg.style.bank``: one image-level style per source crop, all under "ignore".

    The bank is saved every ``s.save_every`` batches with the number of batches done: an interrupted pass
    resumes after them (each crop's style depends only on the crop, so the bank is the same as one pass's);
    a finished bank with the same settings is kept, one with other settings refused."""
    path = Path(cfg.style.bank)
    meta = {"adapt": record, "data": {"train": cfg.data.train, "crop": cfg.data.crop}, "seed": cfg.run.seed}
    dataset = SeededTransform(
        build_dataset(cfg.data.train), train_transform(cfg.data.crop, jitter=0, hflip=0)
    )
    total, size = min(len(dataset), s.images or len(dataset)), cfg.data.batch_size
    batches = math.ceil(total / size)
    if path.is_file():
        bank = StyleBank.load(path)
        changed = changed_settings(bank.metadata.get("settings", {}), meta)
        if changed:
            raise FileExistsError(
                f"style bank {path} was mined with other settings: {'; '.join(changed)}. Pass another --out, "
                "or move that folder away"
            )
    else:
        names = cfg.model.class_names
        bank = StyleBank(
            list(names), model.low_channels, metadata={"settings": meta, "famix_version": __version__}
        )
        bank.metadata.update(description=record["target"], batches_done=0)
    start = bank.metadata.get("batches_done", batches)  # a bank without the count was written whole
    if start >= batches:
        return
    device = next(model.parameters()).device
    text = embed([record["target"]])[0]  # [D]
    pool = style_grid(clip.visual)
    items = [(i, item_seed(cfg.run.seed, i)) for i in range(start * size, total)]
    loader = DataLoader(dataset, batch_size=size, sampler=items, num_workers=cfg.data.workers)
    desc = f"mine {record['target']!r}"
    bar = progress_bar(total=batches, initial=start, desc=desc, disable=not progress)
    for done, (images, _, _) in enumerate(loader, start=start + 1):
        with torch.no_grad():
            f = model.style_features(normalize(images.to(device)))  # [B, C, h, w]
        styles = image_pin(clip.visual, f, text, pool, s.steps, s.pin_lr)
        ignore = torch.full((len(images),), IGNORE_INDEX)
        bank.add(styles.mu, styles.sigma, ignore, IGNORE_INDEX)
        bank.metadata["batches_done"] = done
        bank.metadata["images"] = min(done * size, total)
        if done % s.save_every == 0 or done == batches:
            bank.save(path)
        bar.update(1)
        bar.set_postfix(cos=f"{styles.cos.mean().item():.3f}")
    bar.close()


def _fine_tune(checkpoint, cfg: Config, record: dict) -> Path:
    """Fine-tune the head of ``checkpoint``'s segmenter on restyled source crops: ``famix train`` started
    from its weights, into ``<run>/latest.pt`` (resumed when it holds the same run, refused otherwise)."""
    train(cfg, init_state=load_checkpoint(checkpoint)["model_state"], provenance={"adapt": record})
    return Path(cfg.train.out) / "latest.pt"
