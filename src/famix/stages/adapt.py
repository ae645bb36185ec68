"""``famix adapt``: prompt-driven zero-shot adaptation (PODA, ICCV 2023) of a trained segmenter.

For each target description ("driving at night"), in ``<out>/<slug>/``:

1. ``styles.safetensors``: one style per source crop, mined by image-level PIN
   (``famix.style.image_pin.image_pin``) toward the description's CLIP text embedding. The bank keeps every
   style under ``"ignore"`` (the class lists stay empty), so the mixer, finding no class style, draws from
   them for every image; its metadata records the description, the source and the PIN settings. It is
   saved every ``save_every`` batches: an interrupted pass resumes where it stopped.
2. ``latest.pt`` (and ``best.pt``, ``config.yaml``, ``metrics.jsonl``: a ``famix train`` run started
   from the checkpoint's weights): the segmenter fine-tuned on source crops whose style maps (ResNet
   layer1, ViT patch embedding) are restyled by those styles (``style.mix=augment``, grid 1: each image's
   whole map takes a mined style, full replacement), the HEAD only (freeze preset ``backbone``), for
   ``iterations`` SGD steps (default 2000, poly schedule, head lr 0.01). ``recipe="poda"`` (default) is the
   official code's recipe for both halves (``famix.style.image_pin``; fine-tuning at batch 8, crop 768,
   without jitter, flip or label smoothing, fp32, whatever the checkpoint used); ``recipe="famix"`` mines
   each image on its own and keeps the checkpoint's augmentation (docs/adapt.md). It is a checkpoint like
   any other (``famix eval`` / ``predict``
   load it; its config says ``freeze: backbone``), written every ``ckpt_interval`` steps too: an
   interrupted run resumes from it, a folder made with other settings is refused (as ``famix train``).

One model per target: the head is fitted to one target's feature statistics; a model adapted to several
descriptions at once is FAMix-style generalisation, not PODA's adaptation, and would blur the comparison.

Which CLIP: the styles live in the *segmenter's* style-map space (its own frozen stem and layer1, or a
ViT's patch embedding, make the features); CLIP (the checkpoint's backbone; weights ``clip_weights``, else
those the checkpoint's config names where readable here, as ``famix diagnose``) gives the text embedding
and the tail that embeds the restyled maps (``famix.models.towers.style_tail``). With the CLIP weights the
model was trained from, those layers are the same tensors; otherwise a warning says so.
One process: under torchrun it refuses to start (one line), rather than mining the same bank on every rank.
Both halves are runs with a record (:mod:`famix.engine.runs`): the bank's in its metadata, the fine-tuning's
in its checkpoints; a finished target returns at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import warnings
from pathlib import Path

import torch

from famix.config import (
    Config,
    DataConfig,
    ModelConfig,
    RunConfig,
    StyleConfig,
    TrainConfig,
    check_values,
    from_dict,
)
from famix.data.datasets import SeededTransform, build_dataset
from famix.data.trainids import IGNORE_INDEX
from famix.data.transforms import train_transform
from famix.engine import conditions, pretrained
from famix.engine.amp import resolve
from famix.engine.checkpoint import load_checkpoint, load_segmenter, model_config
from famix.engine.checks import check_specs, warn_crop
from famix.engine.conditions import image_set, load_item, rank
from famix.engine.distributed import resolve_device, single_process
from famix.engine.inference import model_input
from famix.engine.mine import MiningPlan, mine_pass, plan_images
from famix.engine.outputs import check_folder
from famix.engine.runs import RunRecord, check_same, held
from famix.models.clip import build_clip, clip_normalization, weights_fingerprint
from famix.models.towers import style_grid
from famix.paper import PIN_LR, PODA_BATCH, PODA_FINE_TUNE, PODA_LR, PODA_OPTIMIZER
from famix.settings import AdaptSettings
from famix.stages import train
from famix.style.bank import StyleBank
from famix.style.image_pin import check_description, image_pin
from famix.style.patch_mining import MinedStyles
from famix.style.prompts import TextEmbedder
from famix.version import __version__

AUTO = "auto"  # --target auto: the condition CLIP ranks first for --target-data's images


def pin_lr(s: AdaptSettings) -> float:
    """The image-level PIN lr of ``s``: given, else the recipe's."""
    return s.pin_lr if s.pin_lr is not None else (PODA_LR if s.recipe == "poda" else PIN_LR)


def pin_batch(s: AdaptSettings, cfg: Config) -> int:
    """Source crops per mining batch: poda's PIN batch (16), famix's fine-tuning batch (as before)."""
    if s.recipe == "poda":
        return s.pin_batch or PODA_BATCH
    return s.pin_batch or cfg.data.batch_size


SLUG_CHARS = 64  # a run folder name stays far below file systems' 255-byte limit


def slug(target: str) -> str:
    """The run folder name of a target description: "Driving at night!" -> "driving-at-night"; long
    descriptions are cut, with a hash of the whole so that two long ones never share a folder."""
    name = re.sub(r"[^a-z0-9]+", "-", target.lower()).strip("-")
    if not name:
        raise ValueError(
            f"--target {target!r} has no letter or digit: describe the target domain in words, e.g. "
            '--target "driving at night"'
        )
    if len(name) > SLUG_CHARS:
        digest = hashlib.sha256(target.encode()).hexdigest()[:8]
        name = f"{name[: SLUG_CHARS - 9].rstrip('-')}-{digest}"
    return name


REFUSAL = "Pass another --out, or move that folder away"


def fine_tune_config(
    stored: dict, source_spec: str, run: Path, s: AdaptSettings, mix: str = "augment"
) -> Config:
    """The ``famix train`` config of one target's head fine-tuning, from the starting checkpoint's stored
    config: its model with the backbone frozen, its data settings on ``source_spec``, ``s``'s schedule,
    restyled by the target's bank (``mix="augment"``, grid 1; ``"none"``: the no-style control)."""
    model = from_dict(stored.get("model", {}), ModelConfig, "model.")
    data = from_dict(stored.get("data", {}), DataConfig, "data.")
    poda = s.recipe == "poda"
    data = dataclasses.replace(
        data,
        train=source_spec,
        train_weights=None,  # one source (a model trained on several is adapted on the one given)
        val=[],
        crop=s.crop or (PODA_FINE_TUNE["crop"] if poda else data.crop),
        batch_size=s.batch_size or (PODA_FINE_TUNE["batch_size"] if poda else data.batch_size),
        workers=s.workers,
        **({"jitter": PODA_FINE_TUNE["jitter"], "hflip": PODA_FINE_TUNE["hflip"]} if poda else {}),
    )
    train_cfg = from_dict(stored.get("train", {}), TrainConfig, "train.")
    bank = str(run / "styles.safetensors") if mix != "none" else None
    # famix's recipe fine-tunes in the precision the model was trained in, where this device has it
    trained_amp = resolve(stored.get("run", {}).get("amp") or "bf16", resolve_device(s.device), fallback=True)
    return Config(
        model=dataclasses.replace(model, freeze="backbone", weights=None),
        data=data,
        style=StyleConfig(mix=mix, bank=bank, grid=1),
        train=dataclasses.replace(
            train_cfg,
            out=str(run),
            iterations=s.iterations,
            lr=s.lr,
            stop_after=None,
            val_interval=s.iterations,
            ckpt_interval=s.ckpt_interval,
            channels_last=resolve_device(s.device).type == "cuda",
            compile=None,
            **(PODA_OPTIMIZER if poda else {}),
        ),
        run=RunConfig(seed=s.seed, device=s.device, amp=s.amp or ("off" if poda else trained_amp)),
    )


def run(
    checkpoint: str | Path,
    targets: list[str],
    source_spec: str,
    out: str | Path,
    clip_weights: str | None = None,
    settings: AdaptSettings | None = None,
    progress: bool = True,
    say=print,
    target_data: str | None = None,
) -> dict[str, Path]:
    """Adapt ``checkpoint`` to each target description with source crops of ``source_spec``: one model per
    target, ``<out>/<slug>/latest.pt`` (resumed if interrupted, returned at once when finished). Target
    ``"auto"``: the condition CLIP ranks first for the images of ``target_data`` (a folder, glob or dataset
    spec; ``engine.conditions.rank`` over the standard conditions), its words and scores recorded. Every
    input is checked before any target starts. Returns {target: checkpoint path} (``"auto"``'s under it)."""
    s = settings or AdaptSettings()
    single_process("famix adapt", "every rank would mine the same banks")
    if not targets:
        raise ValueError('give at least one target description (--target "driving at night")')
    if AUTO in targets and target_data is None:
        raise ValueError("--target auto names the target from its images: give them with --target-data")
    if AUTO not in targets and target_data is not None:
        raise ValueError("--target-data is for --target auto: drop it, or add --target auto")
    folders = [slug(t) for t in targets]
    if len(set(folders)) != len(folders):
        raise ValueError(f"target descriptions {targets} share run folder names {folders}: make them differ")
    ckpt = load_checkpoint(checkpoint)  # read once
    source = check_specs([source_spec], "--data", model_config(ckpt).labels)[source_spec]
    target_images = image_set(target_data, None, "--target-data")[1] if target_data is not None else None
    check_folder(out, "--out")
    # the CLIP that speaks for the model: --weights, else the weights its config names where readable here
    # (or the package's, for the tiny CLIPs); None: a random CLIP, warned of below (tests' tiny towers)
    clip_weights = conditions.clip_weights(ckpt, clip_weights)
    if clip_weights is None and target_data is not None:
        raise ValueError(
            "--target auto ranks the target images with CLIP, and the model names no CLIP weights readable "
            "here: pass the CLIP it was trained from with --weights"
        )
    device = resolve_device(s.device)
    model, model_cfg = load_segmenter(ckpt, device=device)
    stored = ckpt.get("config", {})
    clip = build_clip(model_cfg.backbone, clip_weights, device=device, seed=0).requires_grad_(False)
    inputs = {
        "checkpoint": pretrained.fingerprint(checkpoint),
        "clip weights": weights_fingerprint(clip_weights),
    }
    given = targets
    if target_images is not None:
        norm = clip_normalization(model_cfg.backbone, clip_weights, model_cfg.mean, model_cfg.std)
        ranking = rank(clip, (load_item(i)[0] for i in target_images), norm)
        top = dict(list(ranking.scores.items())[:5])
        say(f"famix adapt: --target auto: CLIP ranks {ranking.top!r} first for {target_data} "
            f"({', '.join(f'{w} {p:.2f}' for w, p in top.items())})")  # fmt: skip
        targets = [ranking.top if t == AUTO else t for t in targets]
        if len(set(targets)) != len(targets):
            raise ValueError(f"--target auto chose {ranking.top!r}, also given as a --target: drop one")
        inputs["auto target"] = {
            "data": Path(target_data).name
            if Path(target_data).exists()
            else pretrained.shareable_spec(target_data),
            "images": len(target_images),
            "scores": {w: round(p, 4) for w, p in top.items()},
        }
        folders = [slug(t) for t in targets]
    for target in targets:
        check_description(target, getattr(clip, "context_length", 77))
    _check_style_layers(model, clip.visual, clip_weights)
    embed = TextEmbedder(clip)
    cfgs = [fine_tune_config(stored, source_spec, Path(out) / f, s) for f in folders]
    for cfg in cfgs:
        check_values(cfg)
    warn_crop(source, cfgs[0].data.crop, "--crop")  # the recipe's crop (PODA: 768) on small images: said now
    records = [
        _styles_record(c, t, s, model_cfg.backbone, inputs) for t, c in zip(targets, cfgs, strict=True)
    ]
    for cfg, record in zip(cfgs, records, strict=True):  # another run's files: refused before any target
        train.check_out(cfg)
        bank = Path(cfg.style.bank)
        if bank.is_file():
            check_same(record, StyleBank.load(bank).record, bank, REFUSAL)
            train.open_run(Path(cfg.train.out), train.train_record(cfg, kind="adapt", inputs=inputs), REFUSAL)
    written = {}
    for name, cfg, record in zip(given, cfgs, records, strict=True):
        _mine_target(model, clip, embed, cfg, record, s, progress, say)
        written[name] = _fine_tune(ckpt, cfg, inputs, say)
    return written


def control(
    checkpoint: str | Path, source_spec: str, run: str | Path, settings: AdaptSettings, say=print
) -> Path:
    """The control of an adaptation: ``checkpoint``'s head fine-tuned exactly as :func:`run` does it (same
    config, steps, crops, seed) with no restyling, into ``run``; resumed or returned like any run."""
    single_process("famix adapt", "every rank would mine the same banks")
    ckpt = load_checkpoint(checkpoint)
    check_specs([source_spec], "--data", model_config(ckpt).labels)
    check_folder(run, "run")
    cfg = fine_tune_config(ckpt.get("config", {}), source_spec, Path(run), settings, mix="none")
    return _fine_tune(ckpt, cfg, {"checkpoint": pretrained.fingerprint(checkpoint)}, say)


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


def _styles_record(cfg: Config, target: str, s: AdaptSettings, backbone: str, inputs: dict) -> RunRecord:
    """What decides a target's bank: the description, the source crops, the image-level PIN settings, the
    seed, the starting checkpoint and the CLIP (PIN runs in float32: no autocast)."""
    return RunRecord(
        "adapt-styles",
        {
            "target": target,
            "data": {"train": cfg.data.train, "crop": cfg.data.crop, "batch_size": cfg.data.batch_size},
            "pin": {
                "recipe": s.recipe,
                "steps": s.steps,
                "lr": pin_lr(s),
                "images": s.images,
                "batch": pin_batch(s, cfg),
                "weight_decay": s.weight_decay,
            },
            "model": {"backbone": backbone},
            "run": {"seed": cfg.run.seed},
        },
        inputs,
    )


def _mine_target(
    model, clip, embed, cfg: Config, record: RunRecord, s: AdaptSettings, progress: bool, say
) -> None:
    """Write ``cfg.style.bank``: one image-level style per source crop, all under "ignore", by the shared
    mining pass (``engine.mine.mine_pass``) with image-level PIN as its step.

    The bank is saved every ``s.save_every`` batches with the number of batches done: an interrupted pass
    resumes after them (each crop's style depends only on the crop, so the bank is the same as one pass's);
    a finished bank with the same record is kept, one with another record refused."""
    path = Path(cfg.style.bank)
    source = build_dataset(cfg.data.train, cfg.model.labels)
    dataset = SeededTransform(source, train_transform(cfg.data.crop, jitter=0, hflip=0))
    size = pin_batch(s, cfg)
    plan = MiningPlan(
        images=plan_images(len(dataset), s.images),
        batch_size=size,
        seed=cfg.run.seed,
        save_every=s.save_every,
        workers=cfg.data.workers,
    )
    target = record.settings["target"]
    if path.is_file():
        bank = StyleBank.load(path)
        check_same(record, bank.record, path, REFUSAL)
    else:
        # the fine-tuning checks that the bank is of its classes
        labels = cfg.model.labels.to_dict() if cfg.model.classes is not None else None
        metadata = StyleBank.provenance(record.to_dict(), __version__, model.normalization, labels, target)
        bank = StyleBank(cfg.model.labels.names, model.style_channels, metadata=metadata)
    if bank.batches_done >= plan.batches:
        say(f"famix adapt: {path} holds the styles of {target!r}, finished ({len(bank)}): nothing to mine")
        return
    step = _image_step(model, clip, embed([target])[0], s, size)
    with held(path, "--out", file=True):  # a second command mining this target refuses
        mine_pass(dataset, bank, path, plan, step, f"mine {target!r}", progress)


def _image_step(model, clip, text: torch.Tensor, s: AdaptSettings, size: int):
    """The mining step of a target (``engine.mine.Step``): each batch's crops through the segmenter's own
    style-map layers, one image-level PIN toward ``text`` [D] per batch, every style under "ignore"."""
    device = next(model.parameters()).device
    pool = style_grid(clip.visual)

    def step(batches: list) -> list[MinedStyles]:
        mined = []
        for _, images, _ in batches:
            with torch.no_grad():
                f = model.style_features(model_input(model, images.to(device)))  # [B, C, h, w]
            styles = image_pin(
                clip.visual, f, text, pool, s.steps, pin_lr(s), weight_decay=s.weight_decay, recipe=s.recipe,
                batch=size,
            )  # fmt: skip
            ignore = torch.full((len(images),), IGNORE_INDEX)
            mined.append(MinedStyles(styles.mu.cpu(), styles.sigma.cpu(), ignore, styles.cos.cpu()))
        return mined

    return step


def _fine_tune(ckpt: dict, cfg: Config, inputs: dict, say) -> Path:
    """Fine-tune the head of the checkpoint's segmenter (``ckpt``, read once) on source crops restyled by
    ``cfg.style``: ``famix train``'s stage started from its weights, into ``<run>/latest.pt`` (resumed when it
    holds the same run, returned when finished, refused when it holds another)."""
    with warnings.catch_warnings():  # the crop was said under its own option (--crop) before mining
        warnings.filterwarnings("ignore", message="data.crop=")
        train.run(cfg, say, REFUSAL, "adapt", inputs, ckpt["model_state"], name="famix adapt", option="--out")
    return Path(cfg.train.out) / "latest.pt"
