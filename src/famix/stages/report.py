"""``famix report PATH``: one self-contained HTML page of what a run or an evaluation wrote.

PATH is a training run folder (``config.yaml``, ``metrics.jsonl``, ``latest.pt`` / ``best.pt``), a results
JSON written by ``famix eval``, or a folder holding such JSONs (``*.eval.*.json``) or evaluation caches
(``*.eval-cache.json``). The page reads only files already written, never runs a model: every picture is
inline (``data:image/png;base64``), the CSS too, no script, no external address, and paths are shown
relative to PATH (or by name), never as absolute paths of this machine.

Where the source names a checkpoint that exists (a results JSON's ``checkpoint``, a run's ``best.pt`` with
its ``data.val``), :func:`model_pass` runs it again on at most ``max_images`` images per dataset: the page
then shows each dataset's worst images and its reliability diagram. A run whose config names a style bank
that exists gets the bank's per-class counts and a PCA projection of its styles.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from famix.config import flatten
from famix.data.label_sets import LabelSet, from_names
from famix.data.label_sets import parse as parse_label_set
from famix.data.trainids import CLASS_NAMES
from famix.engine.checkpoint import load_checkpoint, load_segmenter
from famix.engine.checks import check_specs
from famix.engine.evaluate import accuracy_from_confusion
from famix.engine.inference import eval_mode, model_input, predict_logits
from famix.engine.loggers import dataset_name
from famix.engine.results import is_results_file
from famix.engine.visualize import with_legend
from famix.io import atomic_write
from famix.settings import PLAIN
from famix.style.bank import IGNORE_KEY, StyleBank
from famix.version import __version__

GENERATOR = "famix report"
MARK = f'<meta name="generator" content="{GENERATOR}">'
TAKES = (
    "a training run folder (config.yaml, metrics.jsonl), a results JSON written by `famix eval`, or a folder "
    "of *.eval.*.json / *.eval-cache.json files"
)
BINS = 15  # reliability diagram: equal-width confidence bins on [0, 1]
MAX_IMAGES = 50  # images per dataset the model pass runs on (evenly spread)
WORST = 4  # worst images shown per dataset
PANEL = 320  # widest panel (pixels) of a worst-image row: larger images are shrunk


@dataclass
class Result:
    """One dataset's evaluation as the page shows it (IoUs and accuracies in percent)."""

    label: str
    miou: float
    aacc: float
    macc: float
    per_class_iou: list[float | None]
    confusion: list[list[int]] | None
    num_images: int | None


@dataclass
class Evaluation:
    """The results of one file: its name, its settings (flat, for a table), class names and colours."""

    source: str
    settings: dict
    classes: list[str]
    colors: list[tuple[int, int, int] | None]
    results: list[Result]


# ---------------------------------------------------------------------------------------------- reading


def _shown(value, base: Path) -> str:
    """A value as text with every absolute path (a whole value or a ``:`` field of a spec) made relative to
    ``base``, or cut to its name outside it: the page never shows this machine's folders."""
    if isinstance(value, list | tuple):
        return ", ".join(_shown(v, base) for v in value)
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, dict):
        return json.dumps(value)

    def one(field: str) -> str:
        if not os.path.isabs(field):
            return field
        try:
            return Path(field).resolve().relative_to(base.resolve()).as_posix() or "."
        except ValueError:
            return Path(field).name

    return ":".join(one(f) for f in str(value).split(":"))


def _default_classes(k: int, names: Sequence[str] | None = None) -> list[str]:
    if names is not None and len(names) == k:
        return list(names)
    return list(CLASS_NAMES) if k == len(CLASS_NAMES) else [str(c) for c in range(k)]


def _accuracies(d: dict) -> tuple[float, float]:
    """aAcc and mAcc (%) from the file, or from its confusion matrix where an older file lacks them."""
    if d.get("aacc") is not None and d.get("macc") is not None:
        return float(d["aacc"]), float(d["macc"])
    if not d.get("confusion"):
        return math.nan, math.nan
    aacc, macc, _ = accuracy_from_confusion(torch.tensor(d["confusion"], dtype=torch.float64))
    return 100 * aacc, 100 * macc


def _result(label: str, d: dict) -> Result:
    per_class = d.get("per_class_iou") or []
    values = list(per_class.values()) if isinstance(per_class, dict) else list(per_class)
    aacc, macc = _accuracies(d)
    return Result(
        label, float(d["miou"]), aacc, macc, values, d.get("confusion"), d.get("num_images")
    )  # fmt: skip


def read_results(path: Path, base: Path) -> Evaluation:
    """A results JSON written by ``famix eval`` (``engine.results.write_results``)."""
    data = json.loads(path.read_text())
    label_set = data.get("label_set") or {}
    entries = label_set.get("classes") or []
    first = next(iter(data["datasets"].values()), {})
    keys = list(first.get("per_class_iou", {})) if isinstance(first.get("per_class_iou"), dict) else None
    classes = keys or [c["name"] for c in entries] or _default_classes(len(first.get("per_class_iou", [])))
    colors = [tuple(c["color"]) if c.get("color") else None for c in entries] or [None] * len(classes)
    settings = {
        k: v
        for k, v in flatten(
            {k: v for k, v in data.items() if k not in ("datasets", "table", "label_set")}
        ).items()
        if k != "grouped_from" and not k.startswith("grouped_from.")
    }
    settings["classes"] = len(classes)
    if "ignore_index" in label_set:
        settings["label_set.ignore_index"] = label_set["ignore_index"]
    settings = {k: _shown(v, base) for k, v in settings.items()}
    results = [_result(dataset_name(spec), d) for spec, d in data["datasets"].items()]
    return Evaluation(path.relative_to(base).as_posix(), settings, classes, colors, results)


def read_cache(path: Path, base: Path, class_names: Sequence[str] | None) -> Evaluation:
    """An evaluation cache ``<checkpoint>.eval-cache.json`` (entries keyed by their run record)."""
    entries = json.loads(path.read_text())
    results, settings, seen = [], {}, {}
    for entry in entries.values():
        record, d = entry.get("run", {}), entry["result"]
        spec = record.get("settings", {}).get("data", "?")
        name = dataset_name(str(spec))
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name} #{seen[name]}"
        for k, v in flatten(record.get("settings", {})).items():
            if k != "data":
                settings[f"{label}: {k}"] = _shown(v, base)
        results.append(_result(label, d))
    k = len(results[0].per_class_iou) if results else 0
    classes = _default_classes(k, class_names)
    return Evaluation(path.relative_to(base).as_posix(), settings, classes, [None] * k, results)


def _is_cache(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return (
        isinstance(data, dict)
        and bool(data)
        and all(isinstance(e, dict) and {"run", "result"} <= set(e) for e in data.values())
    )


def read_metrics(path: Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (lines that are not JSON objects are skipped)."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def _sources(root: Path) -> tuple[bool, list[Path], list[Path]]:
    """What PATH holds: (a training run?, results JSONs, evaluation caches); refused in one line if none."""
    if not root.exists():
        raise FileNotFoundError(f"{root} not found: famix report takes {TAKES}")
    if root.is_file():
        if is_results_file(root):
            return False, [root], []
        if root.name.endswith(".eval-cache.json") and _is_cache(root):
            return False, [], [root]
        raise ValueError(f"{root} is not a results file famix eval wrote: famix report takes {TAKES}")
    is_run = (root / "config.yaml").is_file() and (root / "metrics.jsonl").is_file()
    results = [p for p in sorted(root.glob("*.eval.*.json")) if is_results_file(p)]
    caches = [p for p in sorted(root.glob("*.eval-cache.json")) if _is_cache(p)]
    if not (is_run or results or caches):
        raise ValueError(f"{root} holds no run or evaluation: famix report takes {TAKES}")
    return is_run, results, caches


# ---------------------------------------------------------------------------------------------- figures


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # Agg through Figure.savefig: no pyplot state, no display needed

    return Figure(figsize=(width, height), layout="constrained")


def _steps_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole iterations
    ax.grid(alpha=0.3)


def curves_figure(records: list[dict]) -> str | None:
    """Loss and learning rate over steps, side by side."""
    train = [r for r in records if "loss" in r]
    if not train:
        return None
    fig = _figure(11, 3.8)
    loss_ax, lr_ax = fig.subplots(1, 2)
    steps = [r["step"] for r in train]
    loss_ax.plot(steps, [r["loss"] for r in train], marker="." if len(train) < 50 else None)
    loss_ax.set(title="Training loss", xlabel="step (iteration)", ylabel="loss (cross-entropy, per pixel)")
    lrs = [r.get("lr") for r in train]
    lr_ax.plot(steps, [math.nan if v is None else v for v in lrs], color="tab:orange")
    if all(v is not None and v > 0 for v in lrs):
        lr_ax.set_yscale("log")
    lr_ax.set(title="Learning rate (head)", xlabel="step (iteration)", ylabel="learning rate")
    for ax in (loss_ax, lr_ax):
        _steps_axis(ax)
    return _png(fig)


def validation_figure(records: list[dict]) -> str | None:
    """Validation mIoU per dataset over steps, one line each, and their mean."""
    val = [r for r in records if isinstance(r.get("val_miou"), dict)]
    if not val:
        return None
    fig = _figure(8, 4.2)
    ax = fig.subplots()
    specs = list(dict.fromkeys(s for r in val for s in r["val_miou"]))
    for spec in specs:
        points = [(r["step"], r["val_miou"][spec]) for r in val if spec in r["val_miou"]]
        ax.plot(*zip(*points, strict=True), marker="o", label=dataset_name(spec))
    means = [(r["step"], r["val_mean_miou"]) for r in val if r.get("val_mean_miou") is not None]
    if len(specs) > 1 and means:
        ax.plot(*zip(*means, strict=True), "k--", marker="s", label="mean")
    ax.set(title="Validation mIoU per dataset", xlabel="step (iteration)", ylabel="mIoU (%)")
    _steps_axis(ax)
    ax.legend(title="dataset", fontsize=9)
    return _png(fig)


def _cells(ax, values, text: Callable[[float], str], white: Callable[[float], bool], size: float) -> None:
    """Write each non-nan value of ``values`` [rows][cols] in its cell, white on dark cells."""
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if not math.isnan(v):
                color = "white" if white(v) else "black"
                ax.text(j, i, text(v), ha="center", va="center", fontsize=size, color=color)


def iou_heatmap(evaluation: Evaluation) -> str:
    """Per-dataset x per-class IoU (%), values in the cells; grey: class absent."""
    import matplotlib

    k, rows = len(evaluation.classes), evaluation.results
    values = [[math.nan if v is None else v for v in r.per_class_iou] for r in rows]
    fig = _figure(max(7.0, 0.55 * k + 2.5), max(2.8, 0.55 * len(rows) + 2.2))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d0d0d0")
    image = ax.imshow(values, cmap=cmap, vmin=0, vmax=100, aspect="auto")
    _cells(ax, values, lambda v: f"{v:.1f}", lambda v: v < 60, 7)
    ax.set_xticks(range(k), evaluation.classes, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(rows)), [r.label for r in rows])
    ax.set(title="Per-class IoU (%) per dataset (grey: class absent)", xlabel="class", ylabel="dataset")
    fig.colorbar(image, ax=ax, label="IoU (%)", fraction=0.03)
    return _png(fig)


def confusion_figure(result: Result, classes: Sequence[str]) -> str | None:
    """The confusion matrix with each ground-truth row normalised to 1 (grey rows: class absent)."""
    import matplotlib

    if not result.confusion:
        return None
    cm = torch.tensor(result.confusion, dtype=torch.float64)
    rows = cm.sum(1, keepdim=True)
    norm = torch.where(rows > 0, cm / rows.clamp_min(1), torch.full_like(cm, math.nan))  # [K, K]
    k = cm.shape[0]
    side = max(5.0, 0.34 * k + 2.5)
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#d0d0d0")
    image = ax.imshow(norm.numpy(), cmap=cmap, vmin=0, vmax=1)
    if k <= 30:
        shown = [[v if v >= 0.005 else math.nan for v in row] for row in norm.tolist()]  # blank: < 0.5 %
        _cells(ax, shown, lambda v: f"{v:.2f}".lstrip("0"), lambda v: v > 0.5, 6)
    names = _default_classes(k, classes)
    ax.set_xticks(range(k), names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), names)
    ax.set(
        title=f"Confusion matrix: {result.label} (rows normalised to 1)",
        xlabel="predicted class",
        ylabel="ground-truth class",
    )
    fig.colorbar(image, ax=ax, label="fraction of the ground-truth class's pixels", fraction=0.04)
    return _png(fig)


# ---------------------------------------------------------------------------------------------- model pass


def image_miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """mIoU (%) of one image: pred, target [H, W] class indices (target >= ``num_classes``, e.g. 255: not
    labelled, left out), averaged over the classes present in the truth or the prediction of the labelled
    pixels; nan when no pixel is labelled."""
    keep = target < num_classes
    t, p = target[keep].long(), pred[keep].long()  # [P]
    cm = torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)
    inter = cm.diagonal()  # [K]
    union = cm.sum(0) + cm.sum(1) - inter  # [K]
    present = union > 0
    if not present.any():
        return math.nan
    return float(100 * (inter[present].double() / union[present].double()).mean())


def calibration_counts(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """Per equal-width confidence bin (bin b holds [b / bins, (b + 1) / bins), the last one also 1): the sum
    of the confidences, the number correct and the number of pixels. confidence [P] in [0, 1], correct [P]
    bool -> float64 [bins, 3]; sums of several images add up."""
    conf = confidence.double().reshape(-1)
    index = (conf * bins).long().clamp(0, bins - 1)  # [P]
    return torch.stack(
        [
            torch.bincount(index, weights=conf, minlength=bins),
            torch.bincount(index, weights=correct.reshape(-1).double(), minlength=bins),
            torch.bincount(index, minlength=bins).double(),
        ],
        dim=1,
    )


def reliability(counts: torch.Tensor) -> dict:
    """The reliability diagram of :func:`calibration_counts` [bins, 3]: per bin the mean confidence and the
    accuracy (nan for an empty bin) and the pixel count, and the ECE: the sum over bins of
    count / total * |accuracy - confidence| (fractions, not percent; nan without pixels)."""
    conf_sum, correct_sum, count = counts.unbind(1)  # [bins] each
    total = float(count.sum())
    nan = torch.full_like(count, math.nan)
    confidence = torch.where(count > 0, conf_sum / count.clamp_min(1), nan)
    accuracy = torch.where(count > 0, correct_sum / count.clamp_min(1), nan)
    # count / total * |correct / count - conf / count| = |correct - conf| / total
    ece = float((correct_sum - conf_sum).abs().sum() / total) if total > 0 else math.nan
    return {
        "confidence": confidence.tolist(),
        "accuracy": accuracy.tolist(),
        "count": [int(c) for c in count.tolist()],
        "ece": ece,
    }


def spread(n: int, most: int) -> list[int]:
    """At most ``most`` indices of ``range(n)``, evenly spread (first and last included)."""
    if n <= most:
        return list(range(n))
    return sorted(set(torch.linspace(0, n - 1, most).round().long().tolist()))


def _probabilities(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """uint8 image [3, H, W] -> softmax probabilities float32 [K, H, W]."""
    x = model_input(model, image[None])  # [1, 3, H, W]
    return predict_logits(model, x, PLAIN).float().softmax(1)[0]


def model_pass(
    checkpoint: str | os.PathLike,
    specs: Sequence[str],
    labels: LabelSet | None = None,
    k: int = WORST,
    max_images: int = MAX_IMAGES,
    bins: int = BINS,
) -> dict:
    """Run ``checkpoint`` again on at most ``max_images`` images (evenly spread) of each dataset spec, read
    through ``labels`` (None: the checkpoint's own label set), one image at a time.

    Returns ``{"labels": LabelSet, "datasets": {spec: {...}}}``, per dataset: ``indices`` (the images run),
    ``miou`` (per image, %, :func:`image_miou`, in ``indices`` order), ``worst`` (the ``k`` lowest, ascending:
    dicts of ``index``, ``miou``, ``image`` uint8 [3, H, W], ``truth`` [H, W], ``pred`` uint8 [H, W]),
    ``reliability`` (:func:`reliability` of the max
    softmax probability of the labelled pixels)."""
    model, model_cfg = load_segmenter(checkpoint, channels_last=True)
    labels = labels if labels is not None else model_cfg.labels
    num_classes = len(labels)
    out = {}
    for spec, dataset in check_specs(list(specs), "--data", labels).items():
        indices = spread(len(dataset), max_images)
        mious, counts, worst = [], torch.zeros(bins, 3, dtype=torch.float64), []
        with eval_mode(model), torch.inference_mode():
            for i in indices:
                image, target = dataset[i]  # uint8 [3, H, W], [H, W]
                confidence, pred = _probabilities(model, image).max(0)  # [H, W] each
                keep = target < num_classes
                counts += calibration_counts(confidence[keep], pred[keep] == target[keep], bins)
                miou = image_miou(pred, target, num_classes)
                mious.append(miou)
                if not math.isnan(miou):  # keep only the k worst predictions in memory
                    pred = pred.to(torch.uint8).numpy()
                    worst.append({"index": i, "miou": miou, "image": image, "truth": target, "pred": pred})
                    worst = sorted(worst, key=lambda w: w["miou"])[:k]
        out[spec] = {"indices": indices, "miou": mious, "worst": worst, "reliability": reliability(counts)}
    return {"labels": labels, "datasets": out}


def _shrink(picture: np.ndarray, width: int, nearest: bool) -> np.ndarray:
    """picture [H, W(, 3)] scaled down to at most ``width`` columns (class ids: nearest)."""
    from PIL import Image

    h, w = picture.shape[:2]
    if w <= width:
        return picture
    size = (width, max(1, round(h * width / w)))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(picture).resize(size, resample))


def error_map(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """uint8 [H, W, 3]: wrong pixels red, unlabelled pixels (truth >= ``num_classes``) grey, right ones
    black."""
    out = np.zeros((*truth.shape, 3), np.uint8)
    out[(pred != truth) & (truth < num_classes)] = (220, 20, 20)
    out[truth >= num_classes] = (160, 160, 160)
    return out


def worst_picture(image: torch.Tensor, truth: np.ndarray, pred: np.ndarray, labels: LabelSet) -> str:
    """One worst-image row as a PNG data URI: image | ground truth | prediction | errors, side by side,
    with the legend of the classes in the truth and the prediction below."""
    from PIL import Image

    table, k = labels.palette(), len(labels)
    truth, pred = _shrink(truth, PANEL, True), _shrink(pred, PANEL, True)
    rgb = _shrink(image.permute(1, 2, 0).numpy(), PANEL, False)  # [H, W, 3]
    up = max(1, PANEL // 2 // truth.shape[1])  # small images: whole pixels repeated, so they stay readable
    truth, pred, rgb = (np.repeat(np.repeat(a, up, 0), up, 1) for a in (truth, pred, rgb))
    gap = np.full((truth.shape[0], 6, 3), 255, np.uint8)
    panels = [rgb, table[truth], table[pred], error_map(pred, truth, k)]
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    row = with_legend(row, np.stack([truth, pred]), labels)
    buf = io.BytesIO()
    Image.fromarray(row).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def reliability_figure(rel: dict, label: str) -> str:
    """Accuracy per confidence bin (bars) against the diagonal (perfect calibration), the ECE in the title."""
    bins = len(rel["count"])
    width = 1 / bins
    centres = [(b + 0.5) * width for b in range(bins)]
    fig = _figure(5.2, 4.6)
    ax = fig.subplots()
    acc = [0 if math.isnan(a) else a for a in rel["accuracy"]]
    ax.bar(centres, acc, width=width, edgecolor="black", color="tab:blue", label="accuracy")
    conf = [(c, v) for c, v in zip(centres, rel["confidence"], strict=True) if not math.isnan(v)]
    if conf:
        ax.plot(*zip(*conf, strict=True), "o", color="tab:orange", markersize=4, label="mean confidence")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence (max softmax probability)",
        ylabel="accuracy (labelled pixels)",
        title=f"Reliability: {label} (ECE {100 * rel['ece']:.2f} %)",
    )
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def _rows_with_pictures(rows: Sequence[tuple[Sequence, str, str]], header: Sequence[str], css: str) -> str:
    """A table of text cells whose last cell is a picture: rows of (cells, data URI, alt)."""
    table = _table([[*cells, f"@picture{i}@"] for i, (cells, _, _) in enumerate(rows)], header, css)
    for i, (_, src, alt) in enumerate(rows):
        table = table.replace(f"<td>@picture{i}@</td>", f"<td>{_img(src, alt)}</td>", 1)
    return table


def model_section(name: str, passed: dict, say: Callable[[str], None]) -> str:
    """The worst images and the reliability diagram of each dataset of one :func:`model_pass`."""
    labels = passed["labels"]
    parts = [
        f"<h2>Model pass: {_esc(name)}</h2>",
        "<p>The checkpoint run again, one image at a time (no test-time augmentation). Worst images: the "
        "lowest per-image mIoU (over the classes in the truth or the prediction); columns: image, ground "
        "truth, prediction, errors (red: wrong, grey: not labelled). Reliability: labelled pixels binned "
        "by their max softmax probability.</p>",
    ]
    for spec, d in passed["datasets"].items():
        label = dataset_name(spec)
        rows = []
        for rank, w in enumerate(d["worst"], 1):
            truth = w["truth"].clamp(0, 255).to(torch.uint8).numpy()
            picture = worst_picture(w["image"], truth, w["pred"], labels)
            cells = [(rank, "num"), (w["index"], "num"), (_pct(w["miou"]), "num")]
            rows.append((cells, picture, f"Worst image {rank}: {label}"))
        rel = d["reliability"]
        bins = len(rel["count"])
        rel_rows = [
            [
                f"{b / bins:.3f}-{(b + 1) / bins:.3f}",
                (_pct(100 * c), "num"),
                (_pct(100 * a), "num"),
                (n, "num"),
            ]
            for b, (c, a, n) in enumerate(zip(rel["confidence"], rel["accuracy"], rel["count"], strict=True))
        ]
        parts += [
            f"<h3>{_esc(label)}: the {len(d['worst'])} worst of {len(d['indices'])} images</h3>",
            _rows_with_pictures(
                rows, ["rank", "image", "mIoU (%)", "image | truth | prediction | errors"], "worst"
            ),
            f"<h3>{_esc(label)}: reliability (ECE {_pct(100 * rel['ece'])} %)</h3>",
            _img(reliability_figure(rel, label), f"Reliability diagram: {label}"),
            "<details><summary>Reliability bins as a table</summary>"
            + _table(
                rel_rows, ["confidence bin", "mean confidence (%)", "accuracy (%)", "pixels"], "reliability"
            )
            + "</details>",
        ]
    say(f"model pass on {name}: {len(passed['datasets'])} dataset(s)")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- style bank


def bank_labels(bank: StyleBank) -> LabelSet:
    """The label set a bank was mined for (its metadata), else the one of its class names."""
    stored = bank.metadata.get("label_set")
    if isinstance(stored, dict):
        try:
            labels = parse_label_set(stored, "the style bank")
            if labels.names == list(bank.class_names):
                return labels
        except ValueError:
            pass
    return from_names(list(bank.class_names))


def pca_2d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, D] -> (its centred rows projected on the first two principal axes [N, 2], the fraction of the
    variance each axis explains [2]); N >= 2."""
    centred = x.double() - x.double().mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)  # vh [min(N, D), D]
    axes = vh[:2]
    if axes.shape[0] < 2:
        axes = torch.cat([axes, torch.zeros(2 - axes.shape[0], x.shape[1], dtype=axes.dtype)])
    variance = s**2
    explained = torch.zeros(2, dtype=torch.float64)
    explained[: min(2, len(s))] = (variance / variance.sum().clamp_min(1e-12))[:2]
    return centred @ axes.T, explained


def bank_section(path: Path, shown: str, max_points: int = 5000) -> str:
    """The style bank's per-class counts (bars) and its styles (mu, sigma concatenated) projected on their
    first two principal axes, coloured by class."""
    bank = StyleBank.load(path)
    labels = bank_labels(bank)
    colours = labels.colors() / 255.0
    names = [*bank.class_names, IGNORE_KEY]
    colour_of = {n: tuple(colours[i]) for i, n in enumerate(bank.class_names)}
    colour_of[IGNORE_KEY] = (0.6, 0.6, 0.6)
    counts = bank.counts()
    fig = _figure(max(6.0, 0.4 * len(names) + 2), 4)
    ax = fig.subplots()
    ax.bar(range(len(names)), [counts[n] for n in names], color=[colour_of[n] for n in names], edgecolor="k")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set(title=f"Styles per class ({sum(counts.values())} in all)", xlabel="class", ylabel="styles")
    ax.grid(alpha=0.3, axis="y")
    parts = [f"<h2>Style bank: {_esc(shown)}</h2>", _img(_png(fig), "Style bank: styles per class")]
    x = torch.cat([torch.cat(bank.styles[n], dim=1) for n in names])  # [N, 2C]: mu then sigma
    who = torch.cat([torch.full((counts[n],), i) for i, n in enumerate(names)])  # [N]
    if x.shape[0] < 2:
        return "\n".join([*parts, "<p>Fewer than two styles: no projection.</p>"])
    if x.shape[0] > max_points:  # a fixed subset: the same picture every time
        keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:max_points]
        x, who = x[keep], who[keep]
    points, explained = pca_2d(x)
    fig = _figure(7, 5.5)
    ax = fig.subplots()
    for i, n in enumerate(names):
        mine = points[who == i]
        if len(mine):
            ax.scatter(
                mine[:, 0], mine[:, 1], s=10, color=colour_of[n], edgecolors="k", linewidths=0.2, label=n
            )
    ax.set(
        title=f"Mined styles (mu, sigma), PCA: {x.shape[0]} styles",
        xlabel=f"PC 1 ({100 * explained[0]:.1f} % of the variance)",
        ylabel=f"PC 2 ({100 * explained[1]:.1f} % of the variance)",
    )
    ax.legend(title="class", fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    parts.append(_img(_png(fig), "Style bank: PCA of the mined styles"))
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- the page

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.mean td { font-weight: bold; }
img { max-width: 100%; height: auto; display: block; margin: 0.8em 0; }
.note { background: #fff8e0; border-left: 4px solid #e0b000; padding: 0.5em 1em; }
.swatch { display: inline-block; width: 1em; height: 1em; border: 1px solid #888; vertical-align: middle; }
details { margin: 0.5em 0; } summary { cursor: pointer; }
"""


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _pct(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.2f}"


def _table(rows: Sequence[Sequence], header: Sequence[str] | None = None, css: str = "") -> str:
    """A table of text cells; cells given as ``(text, "num")`` are right-aligned numbers."""

    def cell(c, tag="td") -> str:
        text, kind = c if isinstance(c, tuple) else (c, "")
        return f"<{tag}{f' class={kind!r}' if kind else ''}>{_esc(text)}</{tag}>".replace("'", '"')

    head = f"<tr>{''.join(cell(h, 'th') for h in header)}</tr>" if header else ""
    body = "".join(f"<tr>{''.join(cell(c) for c in row)}</tr>" for row in rows)
    return f'<table class="{css}">{head}{body}</table>'


def _img(src: str | None, alt: str) -> str:
    return f'<img src="{src}" alt="{_esc(alt)}">' if src else f"<p>{_esc(alt)}: nothing logged.</p>"


def metrics_table(evaluation: Evaluation) -> str:
    """mIoU, aAcc and mAcc (%) per dataset and their mean (class ``metrics``: what the tests read)."""
    rows = [
        [r.label, ("-" if r.num_images is None else r.num_images, "num")]
        + [(_pct(v), "num") for v in (r.miou, r.aacc, r.macc)]
        for r in evaluation.results
    ]
    if len(evaluation.results) > 1:
        means = [_nanmean([getattr(r, m) for r in evaluation.results]) for m in ("miou", "aacc", "macc")]
        rows.append(["mean", ("", "num")] + [(_pct(v), "num") for v in means])
    table = _table(rows, ["dataset", "images", "mIoU (%)", "aAcc (%)", "mAcc (%)"], "metrics")
    return table.replace("<tr><td>mean</td>", '<tr class="mean"><td>mean</td>')


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def per_class_table(evaluation: Evaluation) -> str:
    """The heat map's numbers: IoU (%) per class (rows) and dataset (columns), with the class colours."""
    rows = []
    for c, name in enumerate(evaluation.classes):
        color = evaluation.colors[c] if c < len(evaluation.colors) else None
        rows.append([name, color] + [(_pct(r.per_class_iou[c]), "num") for r in evaluation.results])
    table = _table(
        [[r[0], "", *r[2:]] for r in rows], ["class", "colour", *(r.label for r in evaluation.results)],
        "per-class",
    )  # fmt: skip
    for name, color, *_ in rows:  # the swatch: inline style, no picture
        swatch = f'<span class="swatch" style="background: rgb{tuple(color)}"></span>' if color else ""
        table = table.replace(f"<td>{_esc(name)}</td><td></td>", f"<td>{_esc(name)}</td><td>{swatch}</td>", 1)
    return table


def evaluation_section(evaluation: Evaluation) -> str:
    parts = [
        f"<h2>Evaluation: {_esc(evaluation.source)}</h2>",
        "<h3>Evaluation settings</h3>",
        _table(list(evaluation.settings.items()), ["setting", "value"], "settings"),
        "<h3>Accuracy per dataset</h3>",
        metrics_table(evaluation),
        "<h3>Per-class IoU</h3>",
        _img(iou_heatmap(evaluation), "Per-class IoU (%) per dataset"),
        f"<details><summary>Per-class IoU (%) as a table</summary>{per_class_table(evaluation)}</details>",
        "<h3>Confusion matrices</h3>",
    ]
    for r in evaluation.results:
        parts.append(_img(confusion_figure(r, evaluation.classes), f"Confusion matrix: {r.label}"))
    return "\n".join(parts)


def training_section(root: Path) -> str:
    """The run record of the run's checkpoint, its resolved config and its curves."""
    parts = ["<h2>Training run</h2>"]
    ckpt_path = next((root / n for n in ("latest.pt", "best.pt") if (root / n).is_file()), None)
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        record = ckpt.get("run") or {}
        rows = [
            ["checkpoint", ckpt_path.name],
            ["step", ckpt.get("cur_itrs", "-")],
            ["best validation mIoU (%)", _pct(ckpt.get("best_score"))],
            ["famix version", ckpt.get("famix_version", "-")],
            ["kind", record.get("kind", "-")],
        ]
        rows += [[f"input: {k}", _shown(v, root)] for k, v in flatten(record.get("inputs", {})).items()]
        rows += [[k, _shown(v, root)] for k, v in flatten(record.get("settings", {})).items()]
        parts += ["<h3>Run record</h3>", _table(rows, ["key", "value"], "record")]
    else:
        parts.append("<p>No checkpoint (latest.pt, best.pt) in this folder: no run record shown.</p>")
    config = yaml.safe_load((root / "config.yaml").read_text()) or {}
    rows = [[k, _shown(v, root)] for k, v in flatten(config).items()]
    parts += ["<h3>Resolved config (config.yaml)</h3>", _table(rows, ["key", "value"], "config")]
    records = read_metrics(root / "metrics.jsonl")
    parts += [
        "<h3>Training curves</h3>",
        _img(curves_figure(records), "Training loss and learning rate over steps"),
        _img(validation_figure(records), "Validation mIoU per dataset over steps"),
    ]
    return "\n".join(parts)


def page(title: str, sections: Sequence[str], notes: Sequence[str] = ()) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            MARK,
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{_esc(title)}</h1>",
            f"<p>Written by famix {_esc(__version__)} (famix report). IoUs and accuracies in percent.</p>",
            *sections,
            *(
                [f'<h2>Not shown</h2><ul class="note">{"".join(f"<li>{_esc(n)}</li>" for n in notes)}</ul>']
                if notes
                else []
            ),
            "</body></html>",
            "",
        ]
    )


def default_path(path: str | os.PathLike) -> Path:
    """Where the page goes: ``<PATH>/report.html`` for a folder, ``<stem>.report.html`` beside a file."""
    path = Path(path)
    return path / "report.html" if path.is_dir() else path.with_name(f"{path.stem}.report.html")


def check_ours(out: Path) -> None:
    """Refuse to replace a file famix report did not write (its page carries :data:`MARK`)."""
    if not out.exists():
        return
    try:
        ours = out.is_file() and MARK in out.read_text(errors="replace")[:4096]
    except OSError:
        ours = False
    if not ours:
        raise FileExistsError(
            f"{out} exists and is not a page famix report wrote: famix does not replace it. Pass another "
            "output path, or move that file away"
        )


def _existing(written, *folders: Path) -> Path | None:
    """The file ``written`` names: relative to one of ``folders`` (in order), or as written."""
    if not isinstance(written, str) or not written:
        return None
    for candidate in [*(f / written for f in folders), Path(written)]:
        if candidate.is_file():
            return candidate
    return None


def _val_specs(config: dict) -> list[str]:
    val = (config.get("data") or {}).get("val") or []
    return [val] if isinstance(val, str) else [v for v in val if isinstance(v, str)]


def model_sources(
    root: Path, is_run: bool, results: Sequence[Path], caches: Sequence[Path]
) -> tuple[dict[Path, list[str]], list[str]]:
    """The checkpoints the sources name that exist, each with its dataset specs (in order, each once), and
    notes on those that name none found. A run: its ``best.pt`` (else ``latest.pt``) on ``data.val``; a
    results JSON: its ``checkpoint`` on its datasets; a cache ``X.eval-cache.json``: ``X`` on its entries'."""
    found: dict[Path, list[str]] = {}
    notes: list[str] = []

    def add(ckpt: Path, specs: Sequence[str]) -> None:
        have = found.setdefault(ckpt.resolve(), [])
        have += [s for s in specs if s not in have]

    if is_run:
        ckpt = next((root / n for n in ("best.pt", "latest.pt") if (root / n).is_file()), None)
        specs = _val_specs(yaml.safe_load((root / "config.yaml").read_text()) or {})
        if ckpt is not None and specs:
            add(ckpt, specs)
    for path in results:
        data = json.loads(path.read_text())
        written = data.get("checkpoint")
        ckpt = _existing(written, path.parent)
        if ckpt is None:
            notes.append(
                f"{path.name}: its checkpoint ({_shown(written, path.parent)}) is not found beside it or as "
                "written, so the model was not run again on its datasets."
            )
        elif ckpt.suffix == ".onnx":
            notes.append(f"{path.name}: the model pass runs famix checkpoints, not ONNX files ({ckpt.name}).")
        else:
            add(ckpt, list(data["datasets"]))
    for path in caches:
        ckpt = path.with_name(path.name[: -len(".eval-cache.json")])
        if ckpt.is_file() and ckpt.suffix != ".onnx":
            entries = json.loads(path.read_text()).values()
            add(ckpt, [s for e in entries if (s := (e.get("run") or {}).get("settings", {}).get("data"))])
    return found, notes


def bank_source(root: Path) -> tuple[Path | None, str | None]:
    """The style bank a run's config names (``style.bank``) if it exists (as written, relative to the run,
    or by name in the run folder), else a note saying why none is shown (None: the config names none)."""
    config = yaml.safe_load((root / "config.yaml").read_text()) or {}
    written = (config.get("style") or {}).get("bank")
    if not written:
        return None, None
    bank = _existing(written, root) or _existing(Path(written).name, root)
    if bank is None:
        return None, f"The style bank the config names ({_shown(written, root)}) is not found: not shown."
    return bank, None


def run(
    path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    say: Callable[[str], None] = print,
    model: bool = True,
    k: int = WORST,
    max_images: int = MAX_IMAGES,
) -> Path:
    """Write the HTML report of ``path`` (a training run folder, a ``famix eval`` results JSON, or a folder
    of results JSONs / evaluation caches) to ``out`` (default :func:`default_path`); returns its path.

    ``model``: run the checkpoints the sources name again (:func:`model_pass`, at most ``max_images`` per
    dataset) for the ``k`` worst images and a reliability diagram per dataset.

    Refused before any work: a path that is none of these, or an ``out`` famix report did not write."""
    root = Path(path)
    is_run, results, caches = _sources(root)
    target = Path(out) if out is not None else default_path(root)
    check_ours(target)
    base = root if root.is_dir() else root.parent
    sections = [training_section(root)] if is_run else []
    notes = []
    if is_run:
        bank, note = bank_source(root)
        if bank is not None:
            sections.append(bank_section(bank, _shown(str(bank.resolve()), root)))
        notes += [note] if note else []
    class_names = None
    if (base / "config.yaml").is_file():
        class_names = ((yaml.safe_load((base / "config.yaml").read_text()) or {}).get("model") or {}).get(
            "class_names"
        )
    evaluations = [read_results(p, base) for p in results] + [
        read_cache(p, base, class_names) for p in caches
    ]
    sections += [evaluation_section(e) for e in evaluations if e.results]
    if not evaluations:
        sections.append(
            "<h2>Evaluation</h2><p>No evaluation results here (*.eval.*.json, *.eval-cache.json): per-class "
            "IoU and confusion matrices appear once famix eval has evaluated a checkpoint of this run.</p>"
        )
    why = "they need the checkpoint run again on the images (per-image scores, per-pixel confidences)"
    if not model:
        notes.append(f"The worst images and the reliability diagrams: the model pass was skipped; {why}.")
    else:
        checkpoints, missing = model_sources(root, is_run, results, caches)
        notes += missing
        for ckpt, specs in checkpoints.items():
            passed = model_pass(ckpt, specs, k=k, max_images=max_images)
            sections.append(model_section(_shown(str(ckpt), base), passed, say))
        if checkpoints:
            notes.append(
                f"Worst images and reliability come from at most {max_images} images per dataset (evenly "
                "spread) at the input scale, without test-time augmentation: they can differ from the "
                "evaluation's own numbers."
            )
        else:
            notes.append(f"The worst images and the reliability diagrams: no checkpoint found here; {why}.")
    title = f"famix report: {root.resolve().name}"
    text = page(title, sections, notes)
    atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    say(f"report written to {target}")
    return target
