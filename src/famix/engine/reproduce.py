"""``famix reproduce``: the paper's table in one resumable command: mine -> train per seed -> evaluate on
the paper's columns -> one markdown table and JSON, each column's mean +/- std over seeds beside the paper's
number (method.md section 7).

Every stage reuses what a previous run of the same command finished (the bank, each seed's run, each
seed's evaluation); a folder made with other settings is refused by the stage that finds it, never mixed.
Under ``torchrun`` every stage uses all ranks (mining and evaluation sharded, training with DDP); rank 0
writes the table.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from famix.config import Config, changed_settings
from famix.data.check import check_dataset
from famix.engine.checkpoint import load_checkpoint, load_segmenter
from famix.engine.distributed import cleanup, init_distributed, resolve_device
from famix.engine.evaluate import EvalResult, evaluate_specs
from famix.engine.mine import mine
from famix.engine.results import PAPER_COLUMNS, paper_column
from famix.engine.train import train
from famix.io import atomic_write

# The paper's targets under a data root (the splits its protocol evaluates on; README "Real use").
PAPER_TARGETS = (
    "cityscapes:{root}/cityscapes:val",
    "bdd100k:{root}/bdd100k:val",
    "mapillary:{root}/mapillary:validation",
    "synthia:{root}/synthia:val",
    "acdc:night:{root}/acdc:val",
    "acdc:snow:{root}/acdc:val",
    "acdc:rain:{root}/acdc:val",
    "acdc:fog:{root}/acdc:val",
)
# Reported mIoU (%), RN50 / RN101 + DeepLabv3+ trained on GTA5, mean of 3 runs (method.md section 7).
PAPER = {
    ("gta5", "RN50"): dict(
        zip(PAPER_COLUMNS, (48.15, 45.61, 52.11, 34.23, 14.96, 37.09, 38.66, 40.25), strict=True)
    ),
    ("gta5", "RN101"): {"C": 49.47, "B": 46.40, "M": 51.97},
}
# Issue 9's target rates on one H100/H200, used for --dry-run's estimate until measured (docs/benchmarks.md).
RATES = {"train images/s": 210.0, "eval images/s": 170.0, "mine styles/s": 70.0}


@dataclass
class Plan:
    """What a reproduction runs: the base config (source, model, bank), the seeds and the target specs."""

    cfg: Config
    seeds: list[int]
    targets: list[str]
    out: Path

    def run_cfg(self, seed: int) -> Config:
        cfg = copy.deepcopy(self.cfg)
        cfg.run.seed, cfg.train.out = seed, str(self.out / f"seed{seed}")
        return cfg


def under_root(spec: str, root: str | None) -> str:
    """A preset's dataset spec with its ``data/`` root moved under ``root`` (``gta5:data/gta5:train`` ->
    ``gta5:/d/gta5:train``); specs without a ``data/`` root are kept."""
    if root is None:
        return spec
    fields = spec.split(":")
    i = 2 if fields[0].lower() == "acdc" else 1
    if len(fields) > i and fields[i].startswith("data/"):
        fields[i] = str(Path(root) / fields[i][len("data/") :])
    return ":".join(fields)


def make_plan(cfg: Config, out: str, seeds: int, data_root: str | None, targets: list[str] | None) -> Plan:
    cfg = copy.deepcopy(cfg)
    cfg.data.train = under_root(cfg.data.train, data_root)
    cfg.data.val = [under_root(s, data_root) for s in cfg.data.val]
    cfg.style.bank = str(Path(out) / "bank.safetensors")
    if targets is None:
        targets = [t.format(root=data_root or "data") for t in PAPER_TARGETS]
    return Plan(cfg, list(range(cfg.run.seed, cfg.run.seed + seeds)), list(targets), Path(out))


def _record(plan: Plan) -> dict:
    return {"config": plan.cfg.to_dict(), "seeds": plan.seeds, "targets": plan.targets}


def _check_same_plan(plan: Plan) -> None:
    """A reproduction folder holds one plan: other settings, seeds or targets are refused."""
    path = plan.out / "reproduce.yaml"
    if not path.is_file():
        return
    old = yaml.safe_load(path.read_text()) or {}
    changed = changed_settings(old, _record(plan))
    if changed:
        raise FileExistsError(
            f"{plan.out} holds a reproduction with other settings: {'; '.join(changed)}. Pass another --out, "
            "or move that folder away"
        )


def _trained(cfg: Config) -> bool:
    latest = Path(cfg.train.out) / "latest.pt"
    return latest.is_file() and load_checkpoint(latest)["cur_itrs"] >= cfg.train.iterations


def _eval_path(cfg: Config) -> Path:
    return Path(cfg.train.out) / "reproduce_eval.json"


def dry_run(plan: Plan) -> str:
    """The stages, which are done, the data each needs (checked) and a time estimate, as text."""
    c = plan.cfg
    lines = [f"famix reproduce into {plan.out}: {len(plan.seeds)} seed(s), {len(plan.targets)} target(s)"]
    bank_done = Path(c.style.bank).is_file()
    lines.append(f"1. mine {c.style.bank} on {c.data.train}: {'done (resumable)' if bank_done else 'to do'}")
    for s in plan.seeds:
        r = plan.run_cfg(s)
        done = "done" if _trained(r) else "to do"
        lines.append(f"2. train seed {s} ({c.train.iterations} iterations) into {r.train.out}: {done}")
        lines.append(f"3. evaluate seed {s}: {'done' if _eval_path(r).is_file() else 'to do'}")
    lines.append("Data:")
    for spec in [c.data.train, *plan.targets]:
        try:
            report = check_dataset(spec)
            state = "ok" if report["ok"] else "PROBLEM: " + report["problems"][0].splitlines()[0]
        except (ValueError, FileNotFoundError) as e:
            state = f"PROBLEM: {str(e).splitlines()[0]}"
        lines.append(f"  {spec}: {state}")
    train_s = c.train.iterations * c.data.batch_size / RATES["train images/s"]
    lines.append(
        f"Estimate at issue 9's target rates on one H100/H200 (not yet measured): training "
        f"{train_s / 3600:.1f} h per seed, {len(plan.seeds) * train_s / 3600:.1f} h in all, plus mining "
        f"(~{RATES['mine styles/s']:.0f} styles/s) and evaluation (~{RATES['eval images/s']:.0f} images/s)"
    )
    return "\n".join(lines)


def reproduce(plan: Plan, progress: bool = True) -> dict:
    """Run (or resume) every stage; returns {"table": markdown, "columns": ..., "runs": per seed results}."""
    _check_same_plan(plan)
    info = init_distributed(plan.cfg.run.device)
    if info.main:
        plan.out.mkdir(parents=True, exist_ok=True)
        atomic_write(plan.out / "reproduce.yaml", lambda p: p.write_text(yaml.safe_dump(_record(plan))))
    mine(plan.cfg, progress=progress and info.main)
    runs: dict[int, dict[str, EvalResult]] = {}
    for seed in plan.seeds:
        cfg = plan.run_cfg(seed)
        if not _trained(cfg):
            train(cfg)
        runs[seed] = _evaluate(cfg, plan.targets, progress)
    cleanup()
    result = summarise(runs, plan.cfg)
    if info.main:
        atomic_write(plan.out / "results.md", lambda p: p.write_text(result["table"] + "\n"))
        atomic_write(plan.out / "results.json", lambda p: p.write_text(json.dumps(result, indent=1)))
    return result


def _evaluate(cfg: Config, targets: list[str], progress: bool) -> dict[str, EvalResult]:
    """One seed's evaluation on the targets (the final checkpoint), cached in its run folder."""
    path = _eval_path(cfg)
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached["targets"] == targets:
            return {s: EvalResult(**r) for s, r in cached["results"].items()}
    info = init_distributed(cfg.run.device)
    device = resolve_device(cfg.run.device, info)
    model, model_cfg = load_segmenter(Path(cfg.train.out) / "latest.pt", device=device)
    results = evaluate_specs(model, targets, model_cfg.num_classes, device, progress=progress and info.main)
    if info.main:
        payload = {"targets": targets, "results": {s: r.to_dict() for s, r in results.items()}}
        atomic_write(path, lambda p: p.write_text(json.dumps(payload)))
    return results


def _fmt(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    return f"{statistics.mean(values):.2f}" + (
        f" +/- {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    )


def summarise(runs: dict[int, dict[str, EvalResult]], cfg: Config) -> dict:
    """Per column: the seeds' mIoU (%), mean +/- std, the paper's number, the difference; a markdown table."""
    source = cfg.data.train.split(":")[0].lower()
    backbone = cfg.model.backbone if (source, cfg.model.backbone) in PAPER else "RN50"  # the main setting
    paper = PAPER.get((source, backbone), {})
    specs = list(next(iter(runs.values())))
    columns = {}
    for spec in specs:
        name = paper_column(spec) or spec
        values = [r[spec].miou for r in runs.values()]
        per_class = [statistics.mean(v) if (v := [r[spec].per_class_iou[k] for r in runs.values() if
                     r[spec].per_class_iou[k] is not None]) else None
                     for k in range(len(cfg.model.class_names))]  # fmt: skip
        mean = statistics.mean(values)
        columns[name] = {
            "spec": spec,
            "seeds": values,
            "mean": mean,
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "paper": paper.get(name),
            "difference": None if paper.get(name) is None else mean - paper[name],
            "per_class_iou": dict(zip(cfg.model.class_names, per_class, strict=True)),
        }
    names = list(columns)
    means = [columns[n]["mean"] for n in names]
    paper_means = [columns[n]["paper"] for n in names]
    rows = [
        "| | " + " | ".join(names) + " | mean |",
        "|---|" + "---|" * (len(names) + 1),
        f"| famix ({len(runs)} seeds) | "
        + " | ".join(_fmt(columns[n]["seeds"]) for n in names)
        + f" | {statistics.mean(means):.2f} |",
    ]
    if any(p is not None for p in paper_means):
        known = [p for p in paper_means if p is not None]
        all_known = len(known) == len(names)
        rows.append(
            f"| paper ({source} {backbone}) | "
            + " | ".join("-" if p is None else f"{p:.2f}" for p in paper_means)
            + f" | {statistics.mean(known):.2f}{'' if all_known else ' (shown columns)'} |"
        )  # fmt: skip
        diffs = [columns[n]["difference"] for n in names]
        rows.append("| difference | " + " | ".join("-" if d is None else f"{d:+.2f}" for d in diffs) + " | |")
    title = f"mIoU (%), {cfg.model.backbone} trained on {cfg.data.train}; mean +/- std over seeds"
    return {"table": "\n".join([title, "", *rows]), "columns": columns, "unit": "percent"}
