"""Reporting evaluation results: markdown tables (plain and the paper's layout) and JSON result files."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

from famix.data.specs import parse_spec
from famix.data.trainids import CLASS_NAMES
from famix.engine.evaluate import EvalResult
from famix.io import atomic_write
from famix.paper import PAPER_COLUMNS


def mean_std(values: Sequence[float | None], digits: int = 2, sign: bool = False) -> str:
    """``"44.90 +/- 0.60"``: the mean and sample std of the measured values (None / nan skipped), the mean
    alone for one value, "-" for none; ``sign``: a leading + on positive means (deltas)."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return "-"
    mean = f"{statistics.mean(kept):{'+' if sign else ''}.{digits}f}"
    return f"{mean} +/- {statistics.stdev(kept):.{digits}f}" if len(kept) > 1 else mean


def _pct(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.2f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _nanmean(values: Iterable[float]) -> float:
    valid = [v for v in values if not math.isnan(v)]
    return sum(valid) / len(valid) if valid else math.nan


def _class_names(k: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is not None:
        return list(class_names)
    return list(CLASS_NAMES) if k == len(CLASS_NAMES) else [str(c) for c in range(k)]


def format_table(
    results: dict[str, EvalResult], class_names: Sequence[str] | None = None, per_class: bool = False
) -> str:
    """Markdown table of mIoU, aAcc and mAcc (%) per dataset plus their means (mmsegmentation's metrics);
    optionally a per-class table of IoU and accuracy, two columns per dataset."""
    names = list(results)
    lines = [_row(["", *names, "mean"]), _row(["---"] * (len(names) + 2))]
    for metric, values in (
        ("mIoU", [r.miou for r in results.values()]),
        ("aAcc", [r.aacc for r in results.values()]),
        ("mAcc", [r.macc for r in results.values()]),
    ):
        lines.append(_row([metric, *map(_pct, values), _pct(_nanmean(values))]))
    if per_class and results:
        names_k = _class_names(len(next(iter(results.values())).per_class_iou), class_names)
        accs = [r.per_class_acc for r in results.values()]  # derived from each confusion: computed once
        header = [f"{name} {metric}" for name in names for metric in ("IoU", "Acc")]
        lines += ["", _row(["class", *header]), _row(["---"] * (len(header) + 1))]
        for c, cname in enumerate(names_k):
            cells = [
                _pct(v)
                for r, acc in zip(results.values(), accs, strict=True)
                for v in (r.per_class_iou[c], acc[c])
            ]
            lines.append(_row([cname, *cells]))
    return "\n".join(lines)


def format_robustness(rows: dict[str | None, dict[str, EvalResult]]) -> str:
    """Markdown table of mIoU (%): one row per condition (None: the plain images), one column per dataset and
    their mean; a condition's cells add the change from the plain row, e.g. ``41.20 (-12.35)``."""
    plain = rows.get(None)
    names = list(next(iter(rows.values()))) if rows else []
    lines = [_row(["condition", *names, "mean"]), _row(["---"] * (len(names) + 2))]
    for condition, results in rows.items():
        values = [results[n].miou for n in names]
        values.append(_nanmean(values))
        cells = [_pct(v) for v in values]
        if condition is not None and plain is not None:
            base = [plain[n].miou for n in names]
            base.append(_nanmean(base))
            cells = [
                c if c == "-" or math.isnan(b) else f"{c} ({v - b:+.2f})"
                for c, v, b in zip(cells, values, base, strict=True)
            ]
        lines.append(_row(["(plain)" if condition is None else condition, *cells]))
    return "\n".join(lines)


_PAPER_NAMES = {"cityscapes": "C", "bdd100k": "B", "mapillary": "M", "synthia": "S"}  # aliases resolved
_ACDC_CONDITIONS = {"night": "ACDC night", "snow": "snow", "rain": "rain", "fog": "fog"}


def paper_column(spec: str) -> str | None:
    """The paper column of a dataset spec (``cityscapes:ROOT`` -> C, ``acdc:night:ROOT`` -> ACDC night)."""
    parsed = parse_spec(spec)
    if parsed.name == "acdc":
        return _ACDC_CONDITIONS.get((parsed.condition or "").lower())
    return _PAPER_NAMES.get(parsed.name)


def format_paper_table(results: dict[str, EvalResult], name: str = "mIoU") -> str:
    """One markdown row of mIoU (%) laid out like the paper: C, B, M, S, ACDC night, snow, rain, fog, mean.

    Only columns with a result are shown, in the paper's order; datasets without a paper column (or a
    second dataset for a column already filled) follow under their own spec. ``mean`` averages the
    shown columns, as the paper's does, so it matches the paper's only when all eight are present.
    """
    columns: dict[str, float] = {}
    for spec, r in results.items():
        col = paper_column(spec)
        columns[spec if col is None or col in columns else col] = r.miou
    order = [c for c in PAPER_COLUMNS if c in columns] + [c for c in columns if c not in PAPER_COLUMNS]
    values = [columns[c] for c in order]
    return "\n".join(
        [
            _row(["", *order, "mean"]),
            _row(["---"] * (len(order) + 2)),
            _row([name, *map(_pct, values), _pct(_nanmean(values))]),
        ]
    )


def is_results_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a results file :func:`write_results` wrote (a JSON object with its keys)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and {"unit", "datasets", "mean_miou", "table"} <= set(data)


def write_results(
    results: dict[str, EvalResult],
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``results`` to a JSON file, atomically (a crash never leaves half a file behind).

    Per dataset: mIoU, per-class IoU keyed by class name (null = class absent), confusion matrix, image
    count, and mmsegmentation's aAcc, mAcc and per-class accuracy (keyed by class name; null = class absent
    from the ground truth); then the mean mIoU and the paper-layout table (:func:`format_paper_table`).
    IoUs and accuracies are in percent, as everywhere in famix.
    """
    datasets = {}
    for spec, r in results.items():
        d = r.to_dict()
        keys = _class_names(len(r.per_class_iou), class_names)
        d["per_class_iou"] = dict(zip(keys, r.per_class_iou, strict=True))
        d["per_class_acc"] = dict(zip(keys, d["per_class_acc"], strict=True))
        datasets[spec] = d
    mean = _nanmean([r.miou for r in results.values()])
    payload = {
        **(extra or {}),
        "unit": "percent",
        "datasets": datasets,
        "mean_miou": None if math.isnan(mean) else mean,
        "table": format_paper_table(results),
    }
    text = json.dumps(payload, indent=1)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def default_results_path(
    checkpoint: str | os.PathLike, specs: Sequence[str], tta=None, group: str | None = None
) -> Path:
    """Where ``famix eval`` writes results by default: next to the checkpoint, named by what was evaluated
    (``best.eval.cityscapes-val.acdc-night-val.json``; a grouping's name last), so evaluations on other data
    never overwrite it. Long names are shortened with a hash of the full list."""

    def slug(spec: str) -> str:  # the spec without its folder paths: cityscapes:data/cs:val -> cityscapes-val
        parsed = parse_spec(spec)
        kept = [
            Path(f).stem if f.endswith(".txt") else f
            for f in (parsed.written_name, *parsed.fields)
            if "/" not in f or f.endswith(".txt")
        ]
        return re.sub(r"[^A-Za-z0-9=]+", "-", "-".join(kept)).strip("-")

    parts = [slug(s) for s in specs] + ([tta.describe()] if tta is not None and tta.describe() else [])
    parts += [re.sub(r"[^A-Za-z0-9=]+", "-", group)] if group else []
    name = ".".join(parts)
    if len(name) > 80:
        digest = hashlib.sha256("\n".join([*specs, name]).encode()).hexdigest()[:8]
        name = f"{name[:60].rstrip('.-')}.{digest}"
    ckpt = Path(checkpoint)
    return ckpt.with_name(f"{ckpt.stem}.eval.{name}.json")
