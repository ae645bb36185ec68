"""Zero-shot recognition of the synthetic world by a CLIP: style, dominant class, both, on fresh scenes."""

from __future__ import annotations

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from famix.models.clip import clip_preprocess_size
from famix.style.prompts import TextEmbedder, prompt
from famix.world.captions import (
    BOTH_TEMPLATES,
    CLASS_TEMPLATES,
    STYLE_TEMPLATES,
    WORLD_CLASSES,
    crop_images,
    render_world,
    sample_crops,
)
from famix.world.synthetic import DOMAINS


@torch.no_grad()
def _prompt_embeddings(model, templates, fills: list[dict]) -> torch.Tensor:
    """[len(fills), D]: each fill's texts over ``templates``, embedded, averaged, L2-normalised."""
    texts = [t.format(**f) for f in fills for t in templates]
    tokens = open_clip.tokenize(texts, model.context_length)
    e = F.normalize(model.encode_text(tokens).float(), dim=-1).view(len(fills), len(templates), -1)
    return F.normalize(e.mean(1), dim=-1)


@torch.no_grad()
def zero_shot_accuracy(
    model, n_images: int = 1200, seed: int = 0, focus: float = 0.0, chunk: int = 256, imagenet: bool = True
) -> dict:
    """Zero-shot accuracy (%) of ``model`` on ``n_images`` crops of fresh scenes (the "eval" seed range,
    never trained on), one crop per scene, scene i in style i % 12.

    Crops are uniform random squares of 42-100 % of the scene side (``focus`` > 0 mixes in the tight,
    class-centred crops of training). Reported: ``style`` (12-way over all styles), ``class`` (dominant
    class, 13-way over the classes the world draws), ``joint`` (156-way "style + class" prompts), and with
    ``imagenet`` ``joint_imagenet80``: the same 156-way choice with style mining's text embeddings
    (famix.style.prompts: "<style> <class>" averaged over the 80 OpenAI ImageNet templates). Also the
    majority-class share, class accuracy by the margin of the dominant class over the runner-up (near-ties
    are coin flips even for a good model), and per-style / per-class accuracy with counts.
    """
    was_training = model.training
    model.eval()
    world = render_world(n_images, seed, split="eval")
    rng = np.random.default_rng([int(seed), 0x5A07])
    crops = sample_crops(world, rng, n_images, focus=focus, scenes=np.arange(n_images), flip=False)
    size = clip_preprocess_size(model)
    feats = torch.cat(
        [
            F.normalize(model.encode_image(crop_images(world, _subset(crops, i, i + chunk), size)), dim=-1)
            for i in range(0, n_images, chunk)
        ]
    )
    styles = [{"s": s} for s in DOMAINS]
    classes = [{"c": c} for c in WORLD_CLASSES]
    both = [{"s": s, "c": c} for s in DOMAINS for c in WORLD_CLASSES]
    style_pred = (feats @ _prompt_embeddings(model, STYLE_TEMPLATES, styles).T).argmax(1).numpy()
    class_pred = (feats @ _prompt_embeddings(model, CLASS_TEMPLATES, classes).T).argmax(1).numpy()
    truth_joint = crops.style * len(WORLD_CLASSES) + crops.dominant
    joint_pred = (feats @ _prompt_embeddings(model, BOTH_TEMPLATES, both).T).argmax(1).numpy()
    style_ok, class_ok = style_pred == crops.style, class_pred == crops.dominant
    out = {
        "n_images": n_images,
        "seed": seed,
        "focus": focus,
        "style": _pct(style_ok),
        "class": _pct(class_ok),
        "joint": _pct(joint_pred == truth_joint),
        "class_majority": _pct(crops.dominant == np.bincount(crops.dominant).argmax()),
    }
    if imagenet:
        mining = TextEmbedder(model)([prompt(f["s"], f["c"]) for f in both])
        out["joint_imagenet80"] = _pct((feats @ mining.T).argmax(1).numpy() == truth_joint)
    top2 = np.sort(crops.share, 1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]  # how far the dominant class leads the runner-up (share of pixels)
    out["class_by_margin"] = {
        name: {"acc": _pct(class_ok[(margin >= lo) & (margin < hi)]), "n": int(n)}
        for name, lo, hi in (("<0.05", 0, 0.05), ("0.05-0.15", 0.05, 0.15), (">=0.15", 0.15, 2))
        if (n := ((margin >= lo) & (margin < hi)).sum())
    }
    out["per_style"] = {s: _pct(style_ok[crops.style == k]) for k, s in enumerate(DOMAINS)}
    out["per_class"] = {
        c: {"acc": _pct(class_ok[crops.dominant == k]), "n": int((crops.dominant == k).sum())}
        for k, c in enumerate(WORLD_CLASSES)
        if (crops.dominant == k).any()
    }
    model.train(was_training)
    return out


def _pct(ok: np.ndarray) -> float:
    return round(100.0 * float(np.mean(ok)), 2) if len(ok) else float("nan")


def _subset(crops, a: int, b: int):
    return type(crops)(*(getattr(crops, f)[a:b] for f in crops.__dataclass_fields__))
