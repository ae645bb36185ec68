"""``famix reproduce``: the paper's table in one resumable command: mine -> train per seed -> evaluate on
the paper's columns -> one markdown table and JSON, each column's mean +/- sample std over seeds (n - 1)
beside the paper's number (method.md section 7).

A composite: it calls the mine, train and evaluate stages, each of which reuses what it finished before
(the bank, each seed's run, each seed's evaluation on each target) and refuses files of another run. The
targets are an evaluation input only: changing ``--targets`` in an existing ``--out`` keeps the bank and the
trained models. Every input (numbers, specs, targets and the images each keeps) is checked before mining.
Under ``torchrun`` every stage uses all ranks (mining and evaluation sharded, training with DDP); rank 0
writes the table.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from famix.config import Config, check_values
from famix.data.specs import parse_spec
from famix.engine.amp import trained_precision
from famix.engine.checks import check_specs
from famix.engine.distributed import current, resolve_device
from famix.engine.evaluate import EvalResult
from famix.engine.outputs import check_folder
from famix.engine.results import mean_std, paper_column
from famix.io import atomic_write
from famix.paper import PAPER, PAPER_SPLITS, PAPER_TARGETS
from famix.settings import EvalSettings
from famix.stages import evaluate, mine, train

# Issue 9's target rates on one H100/H200, used for --dry-run's estimate until measured (docs/benchmarks.md).
RATES = {"train images/s": 210.0, "eval images/s": 170.0, "mine styles/s": 70.0}


# The evaluation of every seed: the checkpoint's precision, one image per batch (sizes differ per dataset),
# the paper's protocol unless --protocol / --flip / --scales say otherwise.
EVAL = EvalSettings(batch_size=1)


@dataclass
class Plan:
    """What a reproduction runs: the base config (source, model, bank), the seeds and the target specs."""

    cfg: Config
    seeds: list[int]
    targets: list[str]
    out: Path
    eval: EvalSettings = dataclasses.field(default_factory=lambda: EVAL)  # how each seed is evaluated

    def run_cfg(self, seed: int) -> Config:
        cfg = copy.deepcopy(self.cfg)
        cfg.run.seed, cfg.train.out = seed, str(self.out / f"seed{seed}")
        return cfg


def under_root(spec: str, root: str | None) -> str:
    """A preset's dataset spec with its ``data/`` root moved under ``root`` (``gta5:data/gta5:train`` ->
    ``gta5:/d/gta5:train``); specs without a ``data/`` root are kept."""
    if root is None:
        return spec
    parsed = parse_spec(spec)
    if parsed.root is None or not parsed.root.startswith("data/"):
        return spec
    return parsed.with_root(str(Path(root) / parsed.root[len("data/") :])).text


def make_plan(
    cfg: Config,
    out: str,
    seeds: int,
    data_root: str | None,
    targets: list[str] | None,
    bank: str | None = None,
    say=print,
    evaluation: EvalSettings = EVAL,
) -> Plan:
    """The plan of a reproduction into ``out``: ``seeds`` runs from ``run.seed`` on, ``targets`` (default:
    the paper's columns under ``data_root``); the bank is ``bank`` (default ``<out>/bank.safetensors``)."""
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: give a number of training runs >= 1")
    cfg = copy.deepcopy(cfg)
    sources = [under_root(s, data_root) for s in cfg.data.sources]
    cfg.data.train = sources[0] if isinstance(cfg.data.train, str) else sources
    cfg.data.val = [under_root(s, data_root) for s in cfg.data.val]
    chosen = bank or str(Path(out) / "bank.safetensors")
    if bank is None and cfg.style.bank and current().main:
        say(
            f"famix reproduce: the style bank is {chosen} (not the config's {cfg.style.bank}: pass --bank "
            "to use it)"
        )
    cfg.style.bank = chosen
    if targets is None:
        targets = [t.format(root=data_root or "data") for t in PAPER_TARGETS]
    return Plan(cfg, list(range(cfg.run.seed, cfg.run.seed + seeds)), list(targets), Path(out), evaluation)


FIX = "Pass another --out (or --bank), or move that file away"
TRAIN_FIX = "Pass another --out, or move that folder away"


def check_plan(plan: Plan) -> None:
    """Every input before any work: the config's numbers, the output folders, the source and validation
    specs, and each target (built with every filter its loader runs; one that keeps no image is an error)."""
    check_values(plan.cfg)
    check_folder(plan.out, "--out")
    check_folder(Path(plan.cfg.style.bank).parent, "--bank")
    labels = plan.cfg.model.labels
    check_specs(plan.cfg.data.sources, "data.train", labels)
    check_specs(plan.cfg.data.val, "data.val", labels)
    # each target as its evaluation will build it (the protocol may add a loader option)
    built = [evaluate.resolve_protocol(plan.eval.protocol, t, plan.eval.tta)[0] for t in plan.targets]
    check_specs(built, "--targets", labels)
    column_names(plan.targets)  # two targets in one column: refused now, not after training
    # files of another run in the way: refused now, not after mining or after the first seeds trained
    for seed in plan.seeds:  # what refuses a run folder whatever the bank: said before mining
        train.check_out(plan.run_cfg(seed))
    states = [mine.status(plan.cfg, FIX)]
    if Path(plan.cfg.style.bank).is_file():  # the seeds' records depend on the bank's content
        states += [train.status(plan.run_cfg(seed), TRAIN_FIX) for seed in plan.seeds]
    refused = [state.detail for state in states if state.refused]
    if refused:
        raise FileExistsError(" ".join(refused))


def dry_run(plan: Plan) -> tuple[str, bool]:
    """The stages, which are done, the data each needs (checked, with the images each keeps) and a time
    estimate, as text; and whether every check passed."""
    c, ok = plan.cfg, True
    lines = [f"famix reproduce into {plan.out}: {len(plan.seeds)} seed(s), {len(plan.targets)} target(s)"]
    lines.append(f"1. mine {c.style.bank} on {c.data.describe_sources()}: {mine.status(c, FIX)}")
    for s in plan.seeds:
        r = plan.run_cfg(s)
        state = train.status(r, TRAIN_FIX)
        lines.append(f"2. train seed {s} ({c.train.iterations} iterations) into {r.train.out}: {state}")
        latest = Path(r.train.out) / "latest.pt"
        done = latest.is_file() and all(evaluate.is_cached(latest, t, plan.eval) for t in plan.targets)
        lines.append(f"3. evaluate seed {s}: {'done' if done else 'to do'}")
    lines.append("Data:")
    for option, specs in (
        ("data.train", c.data.sources),
        ("data.val", c.data.val),
        ("--targets", plan.targets),
    ):
        for spec in specs:
            try:
                state = f"ok ({len(check_specs([spec], option, c.model.labels)[spec])} images)"
            except (ValueError, FileNotFoundError) as e:
                state, ok = f"PROBLEM: {str(e).splitlines()[0]}", False
            lines.append(f"  {spec}: {state}")
    try:
        column_names(plan.targets)
    except ValueError as e:
        lines.append(f"PROBLEM: {e}")
        ok = False
    train_s = c.train.iterations * c.data.batch_size / RATES["train images/s"]
    lines.append(
        f"Estimate at issue 9's target rates on one H100/H200 (not yet measured): training "
        f"{train_s / 3600:.1f} h per seed, {len(plan.seeds) * train_s / 3600:.1f} h in all, plus mining "
        f"(~{RATES['mine styles/s']:.0f} styles/s) and evaluation (~{RATES['eval images/s']:.0f} images/s)"
    )
    return "\n".join(lines), ok


def run(plan: Plan, progress: bool = True) -> dict:
    """Run (or resume) every stage; returns {"table": markdown, "columns": ..., "unit": "percent"}."""
    check_plan(plan)
    info = current()
    if info.main:  # the plan last run, for the reader (each stage keeps its own record)
        plan.out.mkdir(parents=True, exist_ok=True)
        record = {"config": plan.cfg.to_dict(), "seeds": plan.seeds, "targets": plan.targets}
        atomic_write(plan.out / "reproduce.yaml", lambda p: p.write_text(yaml.safe_dump(record)))
    mine.run(plan.cfg, progress=progress and info.main, fix=FIX)
    runs: dict[int, dict[str, EvalResult]] = {}
    for seed in plan.seeds:
        cfg = plan.run_cfg(seed)
        train.run(cfg, fix=TRAIN_FIX)
        settings = dataclasses.replace(plan.eval, device=cfg.run.device, workers=cfg.data.workers)
        runs[seed], _ = evaluate.run(
            Path(cfg.train.out) / "latest.pt", plan.targets, settings, progress=progress
        )
    result = summarise(runs, plan.cfg, plan.eval)
    device = resolve_device(plan.cfg.run.device, info)
    # the seeds' evaluations' precision: --amp, else the run.amp every seed was trained with (plan.cfg's)
    result["amp"] = trained_precision(plan.eval.amp, plan.cfg.run.amp, device)[0]
    if info.main:
        atomic_write(plan.out / "results.md", lambda p: p.write_text(result["table"] + "\n"))
        atomic_write(plan.out / "results.json", lambda p: p.write_text(json.dumps(result, indent=1)))
    return result


def _split(spec: str) -> str | None:
    """A spec's split field when it is a split name (not a split-list path), lower-cased."""
    split = parse_spec(spec).split
    return split.lower() if split is not None and "/" not in split else None


def column_names(specs: list[str]) -> dict[str, str]:
    """{spec: column name}: the paper's name (C, B, ...) for a target on the paper's split, "C (train)" for
    another split, the spec itself for datasets the paper does not report; two specs in one column: error."""
    names = {}
    for spec in specs:
        name = paper_column(spec)
        split = _split(spec)
        paper_split = PAPER_SPLITS.get(parse_spec(spec).name, "val")
        if name is not None and split is not None and split != paper_split:
            name = f"{name} ({split})"
        names[spec] = name or spec
    seen: dict[str, str] = {}
    for spec, name in names.items():
        if name in seen:
            raise ValueError(
                f"--targets {seen[name]!r} and {spec!r} are one column ({name}): give each benchmark "
                "split once"
            )
        seen[name] = spec
    return names


def _over_seeds(values: list[float]) -> dict:
    """One metric's seeds (nan -> None), their mean and sample std (None when no seed measured it)."""
    measured = [v for v in values if not math.isnan(v)]
    return {
        "seeds": [None if math.isnan(v) else v for v in values],
        "mean": statistics.mean(measured) if measured else None,
        "std": statistics.stdev(measured) if len(measured) > 1 else 0.0 if measured else None,
    }


def summarise(runs: dict[int, dict[str, EvalResult]], cfg: Config, evaluation: EvalSettings = EVAL) -> dict:
    """Per column: the seeds' mIoU (%), mean +/- std, the paper's number, the difference, and
    mmsegmentation's aAcc and mAcc (%) over the seeds; a markdown table of mIoU and one of the accuracies.

    The paper's numbers are shown only for its own (source, backbone) rows; a target with no labelled pixel
    (mIoU None for every seed) is reported as such and left out of the means."""
    source = "+".join(parse_spec(s).name for s in cfg.data.sources)  # the paper has one-source rows only
    # the paper's numbers are of the 19 classes: none under another label set
    paper = PAPER.get((source, cfg.model.backbone), {}) if cfg.model.classes is None else {}
    specs = list(next(iter(runs.values())))
    names = column_names(specs)
    columns = {}
    for spec in specs:
        name = names[spec]
        values = [r[spec].miou for r in runs.values()]
        measured = [v for v in values if not math.isnan(v)]
        per_class = [statistics.mean(v) if (v := [r[spec].per_class_iou[k] for r in runs.values() if
                     r[spec].per_class_iou[k] is not None]) else None
                     for k in range(len(cfg.model.labels))]  # fmt: skip
        mean = statistics.mean(measured) if measured else None
        reported = paper.get(name)
        columns[name] = {
            "spec": spec,
            "seeds": [None if math.isnan(v) else v for v in values],
            "mean": mean,
            "std": statistics.stdev(measured) if len(measured) > 1 else 0.0 if measured else None,
            "paper": reported,
            "difference": None if reported is None or mean is None else mean - reported,
            "per_class_iou": dict(zip(cfg.model.labels.names, per_class, strict=True)),
            "aacc": _over_seeds([r[spec].aacc for r in runs.values()]),
            "macc": _over_seeds([r[spec].macc for r in runs.values()]),
            **({} if measured else {"note": "no labelled pixel: nothing to score"}),
        }
    order = list(columns)
    means = [columns[n]["mean"] for n in order if columns[n]["mean"] is not None]
    overall = f"{statistics.mean(means):.2f}" if means else "-"
    cells = [mean_std(columns[n]["seeds"]) if columns[n]["mean"] is not None else "no labels" for n in order]
    rows = [
        "| | " + " | ".join(order) + " | mean |",
        "|---|" + "---|" * (len(order) + 1),
        f"| famix ({len(runs)} seeds) | " + " | ".join(cells) + f" | {overall} |",
    ]
    paper_means = [columns[n]["paper"] for n in order]
    if any(p is not None for p in paper_means):
        known = [p for p in paper_means if p is not None]
        all_known = len(known) == len(order)
        rows.append(
            f"| paper ({source} {cfg.model.backbone}) | "
            + " | ".join("-" if p is None else f"{p:.2f}" for p in paper_means)
            + f" | {statistics.mean(known):.2f}{'' if all_known else ' (shown columns)'} |"
        )  # fmt: skip
        diffs = [columns[n]["difference"] for n in order]
        rows.append("| difference | " + " | ".join("-" if d is None else f"{d:+.2f}" for d in diffs) + " | |")
    accuracy = [
        "Pixel accuracy (%), as mmsegmentation reports it: aAcc over all labelled pixels, mAcc the mean over "
        "the classes present of each class's accuracy; mean +/- sample standard deviation over the seeds",
        "",
        "| | " + " | ".join(order) + " | mean |",
        "|---|" + "---|" * (len(order) + 1),
    ]
    for metric, key in (("aAcc", "aacc"), ("mAcc", "macc")):
        stats = [columns[n][key] for n in order]
        scored = [m["mean"] for m in stats if m["mean"] is not None]
        row = [mean_std(m["seeds"]) if m["mean"] is not None else "no labels" for m in stats]
        row.append(f"{statistics.mean(scored):.2f}" if scored else "-")
        accuracy.append(f"| {metric} | " + " | ".join(row) + " |")
    title = (
        f"mIoU (%), {cfg.model.backbone} trained on {cfg.data.describe_sources()}; mean +/- sample "
        f"standard deviation over the seeds (n - 1 in the denominator); evaluation: protocol "
        f"{evaluation.protocol}, test time "
        f"{evaluation.tta.describe() or 'plain'}"
    )
    return {
        "table": "\n".join([title, "", *rows, "", *accuracy]),
        "columns": columns,
        "unit": "percent",
        "statistic": "mean +/- sample standard deviation over seeds (n - 1)",
        "protocol": evaluation.protocol,
        "test_time": dataclasses.asdict(evaluation.tta),
    }
