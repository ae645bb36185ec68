"""``famix diagnose``: what a model makes of a target set, labels optional.

Per image and per set: the predicted classes' pixel shares, the mean confidence (max softmax) and entropy,
a per-pixel confidence map, an out-of-domain score (how far the image's style statistics, the channel mean
and std of the segmenter's style map, lie from the source's: the root mean square of their z-scores against
the source images' spread; ``engine.ood``: the reference ``famix train`` stored in the checkpoint), and
CLIP's ranking of condition words (``famix.style.conditions.CONDITIONS`` and the user's own) for the set,
with the ``famix adapt`` command it suggests. Where labels exist: mIoU, and how well confidence predicts
errors (AUROC of confidence for pixel correctness); over several labelled sets, the correlation of the
out-of-domain score with mIoU. Writes ``diagnose.json``, ``diagnose.md`` and the maps.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from famix.config import train_sources
from famix.engine import pretrained
from famix.engine.checkpoint import checkpoint_precision, load_checkpoint, load_segmenter
from famix.engine.checks import check_specs
from famix.engine.conditions import Ranking, clip_weights, image_set, load_clip, load_item, rank
from famix.engine.distributed import resolve_device, single_process
from famix.engine.evaluate import EvalResult, confusion_matrix
from famix.engine.inference import eval_mode, model_input, predict_logits
from famix.engine.ood import ood_score, source_reference, spread_picks, stored_reference, style_vector
from famix.engine.outputs import check_folder, check_replaceable
from famix.io import atomic_write
from famix.models.clip import check_weights_reachable, clip_normalization
from famix.progress import progress_bar

BINS = 10_000  # confidence histogram bins of the AUROC (confidence read to 1e-4)
MARK = "famix diagnose"  # in every diagnose.json famix writes: what it may replace


# --- pure tensor functions ----------------------------------------------------------------------------
def pixel_confidence(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [B, K, H, W] -> (confidence = max softmax [B, H, W], entropy in nats [B, H, W], argmax ids
    [B, H, W])."""
    p = torch.softmax(logits.float(), dim=1)
    confidence, ids = p.max(1)
    entropy = -torch.special.xlogy(p, p).sum(1)
    return confidence, entropy, ids


def confidence_histograms(
    confidence: torch.Tensor, correct: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts [BINS] of the confidence of correct and of wrong valid pixels (bin = floor(conf * BINS))."""
    bins = (confidence[valid] * BINS).long().clamp_(0, BINS - 1)
    right = correct[valid]
    return (
        torch.bincount(bins[right], minlength=BINS),
        torch.bincount(bins[~right], minlength=BINS),
    )


def auroc(right: torch.Tensor, wrong: torch.Tensor) -> float | None:
    """The probability that a random correct pixel is more confident than a random wrong one (ties count
    half), from the binned histograms [BINS] of :func:`confidence_histograms`; None without both kinds."""
    n_right, n_wrong = int(right.sum()), int(wrong.sum())
    if not n_right or not n_wrong:
        return None
    below = torch.cumsum(wrong.double(), 0) - wrong.double()  # wrong pixels in lower bins
    wins = (right.double() * (below + 0.5 * wrong.double())).sum()
    return float(wins / (n_right * n_wrong))


def ranks(values: list[float]) -> list[float]:
    """Average ranks (1-based; ties share their mean rank)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def correlations(x: list[float], y: list[float]) -> dict | None:
    """Pearson's and Spearman's correlation of paired values (3 pairs at least), else None."""
    if len(x) < 3:
        return None

    def pearson(a, b) -> float | None:
        a, b = np.asarray(a, float), np.asarray(b, float)
        if a.std() == 0 or b.std() == 0:
            return None
        return float(np.corrcoef(a, b)[0, 1])

    return {"n": len(x), "pearson": pearson(x, y), "spearman": pearson(ranks(x), ranks(y))}


# --- the pass over a set ------------------------------------------------------------------------------
@dataclass
class SetStats:
    """What :func:`diagnose_set` gathers of one set."""

    name: str
    images: list[dict] = field(default_factory=list)  # per image: name, shares, confidence, entropy, ood
    pixels: torch.Tensor | None = None  # [K] predicted pixels per class
    confusion: torch.Tensor | None = None  # [K, K] where labelled
    right: torch.Tensor | None = None  # [BINS]
    wrong: torch.Tensor | None = None
    ranking: Ranking | None = None

    def summary(self, class_names: list[str]) -> dict:
        total = max(int(self.pixels.sum()), 1)
        out = {
            "images": len(self.images),
            "shares": {
                class_names[k]: round(100 * int(n) / total, 3) for k, n in enumerate(self.pixels) if n
            },
            "confidence": _mean(i["confidence"] for i in self.images),
            "entropy": _mean(i["entropy"] for i in self.images),
            "ood": _mean(i["ood"] for i in self.images if i["ood"] is not None),
        }
        if self.confusion is not None:
            result = EvalResult.from_confusion(self.confusion, len(self.images))
            out["miou"], out["auroc"] = result.miou, auroc(self.right, self.wrong)
        if self.ranking is not None:
            out["conditions"] = self.ranking.to_dict()
        return out


def _mean(values) -> float | None:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None


def diagnose_set(model, items, name, num_classes, device, dtype, reference, progress) -> SetStats:
    """One pass over a set: per-image statistics, class pixels, and where labelled the confusion matrix
    and confidence histograms. ``reference``: the source's (mean, std) of style statistics, or None."""
    stats = SetStats(name, pixels=torch.zeros(num_classes, dtype=torch.int64))
    with eval_mode(model), torch.inference_mode():
        for item in progress_bar(items, desc=f"diagnose {name}", disable=not progress):
            image, label = load_item(item)
            x = model_input(model, image[None].to(device))  # [1, 3, H, W]
            logits = predict_logits(model, x, amp_dtype=dtype)  # [1, K, H, W]
            confidence, entropy, ids = pixel_confidence(logits)
            counts = torch.bincount(ids.flatten().cpu(), minlength=num_classes)
            stats.pixels += counts
            ood = None
            if reference is not None:
                ood = float(ood_score(style_vector(model.style_features(x)).cpu(), *reference)[0])
            total = int(ids.numel())
            stats.images.append({
                "name": item[0],
                "confidence": float(confidence.mean()),
                "entropy": float(entropy.mean()),
                "ood": ood,
                "shares": {int(k): round(100 * int(n) / total, 3) for k, n in enumerate(counts) if n},
            })  # fmt: skip
            if label is not None:
                label = label.to(ids.device)[None]
                valid = label < num_classes
                if stats.confusion is None:
                    stats.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
                    stats.right = torch.zeros(BINS, dtype=torch.int64)
                    stats.wrong = torch.zeros(BINS, dtype=torch.int64)
                stats.confusion += confusion_matrix(ids, label, num_classes).cpu()
                right, wrong = confidence_histograms(confidence, ids == label, valid)
                stats.right += right.cpu()
                stats.wrong += wrong.cpu()
            stats.images[-1]["_confidence"] = confidence[0].cpu()  # for the maps; dropped from the JSON
    return stats


def confidence_picture(confidence: torch.Tensor) -> Image.Image:
    """A confidence map [H, W] in [0, 1] as a picture: viridis colours (dark = unsure), below it a colour
    bar from 0 to 1 captioned "confidence" (the max softmax)."""
    from matplotlib import colormaps

    rgb = (colormaps["viridis"](confidence.numpy())[..., :3] * 255).astype(np.uint8)
    w = rgb.shape[1]
    bar = (colormaps["viridis"](np.linspace(0, 1, w))[None, :, :3] * 255).astype(np.uint8).repeat(8, 0)
    strip = Image.new("RGB", (w, 14), "white")
    draw = ImageDraw.Draw(strip)
    draw.text((1, 1), "0", fill="black")
    draw.text((max((w - 60) // 2, 8), 1), "confidence", fill="black")
    draw.text((w - 7, 1), "1", fill="black")
    return Image.fromarray(np.concatenate([rgb, bar, np.asarray(strip)], axis=0))


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60] or "set"


@dataclass(frozen=True)
class DiagnoseSettings:
    """``famix diagnose``'s options: the user's condition words, CLIP weights (None: the model's), the
    source spec of the out-of-domain reference (None: the reference the checkpoint stores, else the model's
    data.train where readable), its image count, confidence maps written per set, at most ``max_images``
    per set (None: all), device."""

    words: tuple[str, ...] = ()
    weights: str | None = None
    source: str | None = None
    source_images: int = 32
    maps: int = 8
    max_images: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("source_images", "max_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} {value}: give a number >= 1")
        if self.maps < 0:
            raise ValueError(f"--maps {self.maps}: give a number >= 0")
        if any(not w.strip() for w in self.words):
            raise ValueError("--words: a condition of empty text; give words such as 'heavy snow'")


def run(checkpoint, data: list[str], s: DiagnoseSettings, out=None, progress=True, say=print) -> dict:
    """Diagnose ``checkpoint`` on each --data entry (dataset specs with labels, or image files / folders /
    globs without); writes ``diagnose.json``, ``diagnose.md`` and ``maps/`` into ``out`` (default: beside
    the checkpoint, ``<stem>.diagnose/``) and returns the JSON's content. Every input is checked first."""
    single_process("famix diagnose", "every rank would write the same files")
    if not data:
        raise ValueError("--data: give at least one target set (a dataset spec, an image folder or a glob)")
    ckpt = load_checkpoint(checkpoint)
    device = resolve_device(s.device)
    model, cfg = load_segmenter(ckpt, device=device, channels_last=True)
    labels = cfg.labels
    sets = [image_set(entry, labels) for entry in data]  # every entry checked before any work
    weights = clip_weights(ckpt, s.weights)
    if weights is None:
        raise ValueError(
            "--weights: the model names no CLIP weights readable here: pass the CLIP it came from"
        )
    check_weights_reachable(cfg.backbone, weights)
    # the source: --source, else the model's data.train (several sources: all of them) where readable here
    trained_on = (ckpt.get("config") or {}).get("data", {}).get("train")
    specs = [s.source] if s.source is not None else train_sources(trained_on) if trained_on else []
    source_data = None
    if specs:
        try:
            source_data = list(check_specs(specs, "--source", labels).values())
        except (ValueError, FileNotFoundError):
            if s.source is not None:
                raise  # the model's own source not on this machine: the stored reference, if any
    source = specs[0] if specs else None  # the suggested famix adapt's --data
    folder = Path(out) if out is not None else pretrained.base_path(checkpoint).with_suffix(".diagnose")
    check_folder(folder, "--out")
    check_replaceable(folder / "diagnose.json", _ours, "diagnose results", force=False)
    _, dtype = checkpoint_precision(None, ckpt, device)
    # the out-of-domain reference: the one training stored (engine.ood), unless --source asks for another;
    # else computed from the source data where it is readable
    reference = stored_reference(ckpt) if s.source is None else None
    reference_from = "checkpoint" if reference is not None else None
    if reference is None and source_data is not None:
        reference = source_reference(model, source_data, s.source_images, device, progress)
        reference_from = "source data"
    clip = load_clip(cfg.backbone, weights, device)
    norm = clip_normalization(cfg.backbone, weights, cfg.mean, cfg.std)
    results, source_ranking = {}, None
    if source_data is not None:
        first = source_data[0]  # CLIP's words for the (first) source: sets that look like it do not vote
        picks = spread_picks(len(first), s.source_images)
        source_ranking = rank(clip, (first[i][0] for i in picks), norm, s.words)
    for name, items in sets:
        if s.max_images is not None and len(items) > s.max_images:
            n = len(items)
            items = [items[round(i * (n - 1) / max(s.max_images - 1, 1))] for i in range(s.max_images)]
        stats = diagnose_set(model, items, name, len(labels), device, dtype, reference, progress)
        stats.ranking = rank(clip, (load_item(i)[0] for i in items), norm, s.words)
        for image in stats.images[: s.maps]:
            picture = confidence_picture(image["_confidence"])
            dst = folder / "maps" / slug(name) / f"{slug(image['name'])}_confidence.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(dst, lambda tmp, p=picture: p.save(tmp, format="PNG"))
        for image in stats.images:
            image.pop("_confidence")
            image["shares"] = {labels.names[k]: v for k, v in image["shares"].items()}
        results[name] = {**stats.summary(labels.names), "per_image": stats.images}
    labelled = [r for r in results.values() if r.get("miou") is not None and r.get("ood") is not None]
    report = {
        "famix": MARK,
        "model": Path(str(checkpoint)).name,
        "weights": Path(weights).name if Path(weights).is_file() else weights,
        "source": source,
        "reference": reference_from,
        "source_conditions": source_ranking.to_dict() if source_ranking else None,
        "sets": results,
        "ood_vs_miou": correlations([r["ood"] for r in labelled], [r["miou"] for r in labelled]),
    }
    report["suggestion"] = suggestion(checkpoint, report, source)
    atomic_write(folder / "diagnose.json", lambda tmp: tmp.write_text(json.dumps(report, indent=1) + "\n"))
    text = markdown(report)
    atomic_write(folder / "diagnose.md", lambda tmp: tmp.write_text(text))
    say(text)
    say(f"famix diagnose: wrote {folder}/diagnose.json, diagnose.md and maps/")
    return report


def _ours(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("famix") == MARK
    except (OSError, ValueError, AttributeError):
        return False


def suggestion(checkpoint, report: dict, source: str | None) -> dict:
    """The ``famix adapt`` command the ranking suggests. Each set votes, with its image count, for the word
    it ranks first; a set whose first word is also the source's first looks like the source and does not
    vote (so diagnosing the source beside targets never suggests a word no set ranks first). None when no
    set votes."""
    first_on_source = (
        next(iter(report["source_conditions"]["scores"])) if report["source_conditions"] else None
    )
    votes: dict[str, int] = {}
    for r in report["sets"].values():
        first = next(iter(r["conditions"]["scores"]))
        if first != first_on_source:
            votes[first] = votes.get(first, 0) + r["images"]
    if not votes:
        why = f"every set ranks {first_on_source!r} first, as the source does: the targets look like it"
        return {"target": None, "why": why}
    top = max(votes, key=votes.get)
    command = f'famix adapt {checkpoint} --target "{top}" --data {source or "SOURCE_SPEC"} --out runs/adapt'
    return {"target": top, "command": command, "votes": votes}


def _fmt(v, digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def markdown(report: dict) -> str:
    """diagnose.md: one row per set, then each set's top conditions, the correlation and the suggestion."""
    lines = [
        f"# famix diagnose: {report['model']}",
        "",
        "| set | images | confidence | entropy | out-of-domain | mIoU (%) | AUROC | CLIP: first condition |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in report["sets"].items():
        first, score = next(iter(r["conditions"]["scores"].items()))
        lines.append(
            f"| `{name}` | {r['images']} | {_fmt(r['confidence'], 3)} | {_fmt(r['entropy'], 3)} | "
            f"{_fmt(r['ood'])} | {_fmt(r.get('miou'))} | {_fmt(r.get('auroc'), 3)} | {first} ({score:.2f}) |"
        )
    source = {
        "checkpoint": f"{report['source']}, stored in the checkpoint at training",
        "source data": f"{report['source']}, computed from its images",
    }.get(report.get("reference"), "no reference stored and no source data: not computed")
    lines += ["", f"Out-of-domain: RMS z-score of the style statistics against the source images ({source}); "
              "AUROC: of confidence for pixel correctness.", ""]  # fmt: skip
    for name, r in report["sets"].items():
        top = ", ".join(f"{t} {s:.2f}" for t, s in list(r["conditions"]["scores"].items())[:5])
        lines.append(f"- `{name}`: {top}")
    c = report["ood_vs_miou"]
    if c:
        lines += ["", f"Out-of-domain score vs mIoU over {c['n']} sets: Pearson {_fmt(c['pearson'])}, "
                  f"Spearman {_fmt(c['spearman'])}."]  # fmt: skip
    sug = report["suggestion"]
    lines += [
        "",
        f"Suggested: `{sug['command']}`" if sug.get("target") else f"No adaptation suggested: {sug['why']}.",
        "",
    ]
    return "\n".join(lines)
