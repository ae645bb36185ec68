"""The demo's outputs: a markdown table (mean +/- std over seeds, groups, paired deltas), a bar chart and a
grid of predictions per domain."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import torch

from famix.data.trainids import colorize
from famix.engine.inference import model_input
from famix.engine.results import mean_std
from famix.io import atomic_write
from famix.world.synthetic import SOURCE_DOMAIN, render

# Held-out domains grouped by the kind of shift: global statistics (what restyling features can imitate)
# versus structure (lights, streaks, flakes: new local patterns).
GROUPS = {"statistics-like": ("fog",), "structure-like": ("night", "snow", "rain")}


def _scores(runs_of_variant: dict, domains: list[str]) -> dict[str, list[float]]:
    """{column: [score per seed]} in percent, with group means and the held-out mean."""
    held_out = [d for d in domains if d != SOURCE_DOMAIN]
    cols: dict[str, list[float]] = {d: [] for d in domains}
    for group in GROUPS:
        cols[group] = []
    cols["held-out mean"] = []
    for per_domain in runs_of_variant.values():
        miou = {d: per_domain[d]["miou"] for d in domains}  # percent
        for d in domains:
            cols[d].append(miou[d])
        for group, members in GROUPS.items():
            present = [m for m in members if m in miou]
            cols[group].append(sum(miou[m] for m in present) / max(len(present), 1))
        cols["held-out mean"].append(sum(miou[d] for d in held_out) / len(held_out))
    return cols


def _fmt(values: list[float]) -> str:
    return mean_std(values, digits=1)


def report(
    runs: dict, domains: list[str], baseline: str, famix: str, language_free: str, clip: str = "tiny-clip"
) -> str:
    """Markdown: one row per variant (mIoU %, mean +/- std over seeds), then FAMix's paired deltas."""
    scores = {name: _scores(r, domains) for name, r in runs.items() if r}
    cols = list(next(iter(scores.values())))
    seeds = len(next(iter(runs.values())))
    lines = [
        f"mIoU (%) on the synthetic world, {clip} backbone, trained on {SOURCE_DOMAIN} only; {seeds} seed(s)",
        "",
        "| variant (Freeze/Augment/Mix) | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    lines += [f"| {name} | " + " | ".join(_fmt(s[c]) for c in cols) + " |" for name, s in scores.items()]
    for other in (baseline, language_free):
        if famix in scores and other in scores:
            ours, theirs = scores[famix]["held-out mean"], scores[other]["held-out mean"]
            deltas = ", ".join(f"{a - b:+.1f}" for a, b in zip(ours, theirs, strict=True))
            lines += ["", f"FAMix - {other}, held-out mean, per seed: {deltas}"]
    return "\n".join(lines) + "\n"


def adapt_report(
    runs: dict,
    domains: list[str],
    target: str,
    start: str,
    deltas: list[tuple[str, str]],
    clip: str = "tiny-clip",
) -> str:
    """Markdown for the adaptation demo: one row per model (mIoU %, mean +/- std over seeds), then, for each
    (a, b) in ``deltas``, the paired difference a - b per seed (mean +/- std over seeds)."""
    title = (
        f"mIoU (%) on the synthetic world, {clip} backbone: {start} trained on {SOURCE_DOMAIN} only, "
        f"adapted to the words {target!r} (no target image); {len(runs[start])} seed(s)"
    )
    return paired_table(runs, domains, title, deltas)


def save_results(out: Path, stem: str, text: str, payload: dict) -> None:
    """A demo's table: printed, then written atomically as ``<out>/<stem>.md`` and its data as ``.json``."""
    print(text)
    atomic_write(out / f"{stem}.md", lambda p: p.write_text(text))
    data = json.dumps(payload, indent=1)
    atomic_write(out / f"{stem}.json", lambda p: p.write_text(data))


def paired_table(runs: dict, domains: list[str], title: str, deltas: list[tuple[str, str]]) -> str:
    """``title``, then one row per model of ``runs`` ({row: {seed: {domain: result}}}: mIoU %, mean +/- std
    over seeds), then for each (a, b) in ``deltas`` the paired difference a - b per seed."""
    scores = {name: _scores(r, domains) for name, r in runs.items() if r}
    cols = list(next(iter(scores.values())))
    lines = [title, "", "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {name} | " + " | ".join(_fmt(s[c]) for c in cols) + " |" for name, s in scores.items()]
    for a, b in deltas:
        diff = {c: [x - y for x, y in zip(scores[a][c], scores[b][c], strict=True)] for c in cols}
        lines.append(f"| {a} - {b} (paired) | " + " | ".join(_fmt_delta(diff[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _fmt_delta(values: list[float]) -> str:
    return mean_std(values, digits=1, sign=True)


def bank_table(counts: dict[int, dict[str, dict[str, int]]]) -> str:
    """Markdown: the style banks' number of styles per class, for each seed's bank of each kind."""
    rows = [(s, kind, c) for s, per_kind in counts.items() for kind, c in per_kind.items()]
    if not rows:
        return ""
    classes = list(dict.fromkeys(k for *_, c in rows for k in c))
    lines = [
        "",
        "Style bank: mined styles per dominant class",
        "",
        "| seed | bank | " + " | ".join(classes) + " |",
        "|---|---|" + "---|" * len(classes),
    ]
    for s, kind, c in rows:
        lines.append(f"| {s} | {kind} | " + " | ".join(str(c.get(k, 0)) for k in classes) + " |")
    return "\n".join(lines) + "\n"


def chart(runs: dict, domains: list[str], path: Path) -> None:
    """Grouped bars of mIoU per domain for every variant; with several seeds, their sample standard
    deviation as error bars (one seed: none, and the title says so)."""
    scores = {name: _scores(r, domains) for name, r in runs.items() if r}
    cols = [*domains, "held-out mean"]
    seeds = max(len(v) for s in scores.values() for v in s.values())
    means = {name: [statistics.mean(s[c]) for c in cols] for name, s in scores.items()}
    errs = {name: [statistics.stdev(s[c]) for c in cols] for name, s in scores.items()} if seeds > 1 else None
    bar_chart(means, errs, cols, seeds, path)


def bar_chart(
    means: dict[str, list[float]],
    errs: dict[str, list[float]] | None,
    cols: list[str],
    seeds: int,
    path: Path,
) -> None:
    """The demo's chart of ``means[variant][column]`` (mIoU %), ``errs`` the error bars (None: none), over
    ``seeds`` seeds: the legend right of the bars, never on them; a width that fits a page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(min(12, 3 + 1.1 * len(cols) * max(1, len(means) / 3)), 4))
    width = 0.8 / len(means)
    for i, (name, m) in enumerate(means.items()):
        yerr = errs[name] if errs is not None else None
        ax.bar([j + i * width for j in range(len(cols))], m, width, yerr=yerr, label=name, capsize=2)
    ax.set_xticks([j + width * (len(means) - 1) / 2 for j in range(len(cols))], cols)
    ax.set_ylabel("mIoU (%)")
    spread = f"mean of {seeds} seeds, bars: sample std" if seeds > 1 else "one seed"
    ax.set_title(f"famix demo: trained on {SOURCE_DOMAIN}, tested on unseen domains ({spread})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, title="variant")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)


@torch.inference_mode()
def prediction_grid(out: Path, seed: int, domains: list[str], variants: list[str], slug, size: int) -> None:
    """One scene per domain (rows, labelled): image, ground truth, then each variant's prediction
    (columns, labelled), with one legend below (swatch and name of every class the maps show), written to
    ``out/predictions.png`` (and what its rows and columns are to ``predictions.txt``)."""
    from PIL import Image

    from famix.data.label_sets import from_names
    from famix.data.trainids import CLASS_NAMES
    from famix.engine.checkpoint import load_segmenter
    from famix.engine.visualize import with_legend

    models = [load_segmenter(str(out / f"seed{seed}" / slug(v) / "latest.pt"))[0] for v in variants]
    cells, maps = [], []  # maps: the class-index maps shown, [H, W] each
    for domain in domains:
        image, label = render(20_000 + seed, domain, (size, size))
        raw = torch.from_numpy(image).permute(2, 0, 1)[None]  # [1, 3, H, W] uint8
        preds = [m(model_input(m, raw)).argmax(1)[0].numpy().astype(np.uint8) for m in models]  # [H, W] each
        cells.append([image, colorize(label), *[colorize(p) for p in preds]])
        maps += [label, *preds]
    grid = labelled_grid(cells, domains, ["image", "ground truth", *variants])
    grid = with_legend(grid, np.stack(maps), from_names(CLASS_NAMES))  # colorize's colours: Cityscapes'
    atomic_write(out / "predictions.png", lambda p: Image.fromarray(grid).save(p, format="PNG"))
    header = "columns: image, ground truth, " + ", ".join(variants) + "; rows: " + ", ".join(domains)
    atomic_write(out / "predictions.txt", lambda p: p.write_text(header + "\n"))


def labelled_grid(
    cells: list[list[np.ndarray]], row_labels: list[str], col_labels: list[str], pad: int = 4
) -> np.ndarray:
    """Tile ``cells[row][col]`` (uint8 [h, w, 3], all one size) into a grid and label it, black on white:
    ``row_labels`` in a left margin, ``col_labels`` in a top margin (words wrapped to the cell width).

    Returns uint8 [top + rows * h, left + cols * w, 3]; the bare grid is ``result[top:, left:]``.
    """
    from PIL import Image, ImageDraw, ImageFont

    if len(cells) != len(row_labels) or any(len(r) != len(col_labels) for r in cells):
        raise ValueError(f"{len(row_labels)} row and {len(col_labels)} column labels for a grid of cells")
    h, w = cells[0][0].shape[:2]
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def width(text: str) -> float:
        return draw.textlength(text, font=font)

    def wrap(text: str) -> list[str]:
        lines = [""]
        for word in text.split():
            joined = f"{lines[-1]} {word}".strip()
            if lines[-1] and width(joined) > w - pad:
                lines.append(word)  # a word longer than the cell keeps a line of its own
            else:
                lines[-1] = joined
        return lines

    columns = [wrap(label) for label in col_labels]
    line = draw.textbbox((0, 0), "Ag", font=font)[3] + 2  # line height
    top = 2 * pad + line * max(len(c) for c in columns)
    left = 2 * pad + int(max(width(label) for label in row_labels) + 1)
    grid = np.concatenate([np.concatenate(row, axis=1) for row in cells], axis=0)  # [rows*h, cols*w, 3]
    canvas = Image.new("RGB", (left + grid.shape[1], top + grid.shape[0]), "white")
    canvas.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(canvas)
    for j, lines in enumerate(columns):
        for i, text in enumerate(lines):
            draw.text((left + j * w + (w - width(text)) / 2, pad + i * line), text, fill="black", font=font)
    for i, label in enumerate(row_labels):
        draw.text((pad, top + i * h + (h - line) / 2), label, fill="black", font=font)
    return np.asarray(canvas)
