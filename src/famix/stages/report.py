"""``famix report PATH``: one self-contained HTML page of what a run or an evaluation wrote.

PATH is a training run folder (``config.yaml``, ``metrics.jsonl``, ``latest.pt`` / ``best.pt``), a results
JSON written by ``famix eval``, or a folder holding such JSONs (``*.eval.*.json``) or evaluation caches
(``*.eval-cache.json``). The page reads only files already written, never runs a model: every picture is
inline (``data:image/png;base64``), the CSS too, no script, no external address, and paths are shown
relative to PATH (or by name), never as absolute paths of this machine.
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

import torch
import yaml

from famix.config import flatten
from famix.data.trainids import CLASS_NAMES
from famix.engine.checkpoint import load_checkpoint
from famix.engine.evaluate import accuracy_from_confusion
from famix.engine.loggers import dataset_name
from famix.engine.results import is_results_file
from famix.io import atomic_write
from famix.version import __version__

GENERATOR = "famix report"
MARK = f'<meta name="generator" content="{GENERATOR}">'
TAKES = (
    "a training run folder (config.yaml, metrics.jsonl), a results JSON written by `famix eval`, or a folder "
    "of *.eval.*.json / *.eval-cache.json files"
)
NOT_SHOWN = (
    "Not shown: the worst images per dataset and a reliability (calibration) diagram. Both need the model "
    "run again on the images (per-image scores, per-pixel confidences), and famix report only reads the "
    "files a run or an evaluation already wrote."
)


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


def page(title: str, sections: Sequence[str]) -> str:
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
            f'<h2>Not shown</h2><p class="note">{_esc(NOT_SHOWN)}</p>',
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


def run(
    path: str | os.PathLike, out: str | os.PathLike | None = None, say: Callable[[str], None] = print
) -> Path:
    """Write the HTML report of ``path`` (a training run folder, a ``famix eval`` results JSON, or a folder
    of results JSONs / evaluation caches) to ``out`` (default :func:`default_path`); returns its path.

    Refused before any work: a path that is none of these, or an ``out`` famix report did not write."""
    root = Path(path)
    is_run, results, caches = _sources(root)
    target = Path(out) if out is not None else default_path(root)
    check_ours(target)
    base = root if root.is_dir() else root.parent
    sections = [training_section(root)] if is_run else []
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
    title = f"famix report: {root.resolve().name}"
    text = page(title, sections)
    atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    say(f"report written to {target}")
    return target
