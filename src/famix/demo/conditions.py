"""Do conditions named in words rank models as the real conditions do? (issue 32, item 4; docs/conditions.md)

For each of the demo's model variants (``famix demo``'s runs on synthetic day: the same folders, so either
reuses the other's): its mIoU on held-out day scenes restyled toward each held-out domain's name by
``famix eval --condition`` (``stages.evaluate.robustness``), its mIoU on the same day scenes as they are, and
its mIoU on that domain's real held-out scenes (the demo's evaluation). Per domain, the Spearman correlation
over the variants of the restyled mIoU with the real one, and, as the control, of the plain day mIoU with
the real one (a condition that ranks no better than day itself adds nothing).

    python -m famix.demo.conditions --out famix-demo [--variant=-/-/- --variant="F/A/M (FAMix)" ...]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

from famix.demo.report import save_results
from famix.demo.run import (
    ABLATION,
    EVAL,
    FAMIX,
    SIZE,
    _mine_banks,
    _say,
    demo_config,
    run_folder,
    train_and_evaluate,
)
from famix.engine.results import format_robustness
from famix.paper import PIN_STEPS
from famix.stages import diagnose, evaluate
from famix.world import SHIFTED_DOMAINS, SOURCE_DOMAIN

# the paper's Freeze / Augment / Mix grid (famix demo --ablation's rows without its two bank controls)
DEFAULT_VARIANTS = ("-/-/-", "-/A/-", "-/-/M", "-/A/M", "F/-/-", "F/A/-", "F/-/M", FAMIX)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation of two lists (famix diagnose's; nan when one is flat or n < 3)."""
    c = diagnose.correlations(a, b)
    return float("nan") if c is None or c["spearman"] is None else c["spearman"]


def correlations(rows: dict) -> dict:
    """Per held-out domain, Spearman over the variants of ``rows`` ({variant: {"real", "day_plain",
    "restyled"}}) of the restyled mIoU with the real one ("restyled") and of the plain day mIoU with the real
    one ("day", the control); and the same over the frozen-backbone variants only ("frozen ..."): PIN judges
    a restyle with the CLIP the model started from, whose early layers a fully fine-tuned model changed."""
    frozen = [v for v in rows if ABLATION[v].freeze != "none"]
    out = {}
    for d in SHIFTED_DOMAINS:
        out[d] = {}
        for prefix, names in (("", list(rows)), ("frozen ", frozen)):
            real = [rows[v]["real"][d] for v in names]
            out[d][prefix + "restyled"] = spearman([rows[v]["restyled"][d] for v in names], real)
            out[d][prefix + "day"] = spearman([rows[v]["day_plain"] for v in names], real)
    return out


def measure(
    out: str | Path,
    variants: list[str],
    seed: int = 0,
    images: int | None = None,
    steps: int = PIN_STEPS,
    quick: bool = False,
) -> dict:
    """Train (or reuse) each variant, evaluate it on the real held-out domains (the demo's 300 scenes each)
    and on ``images`` held-out day scenes restyled toward each domain's name; returns
    {"variants": {name: {...}}, "spearman": {...}}. ``quick``: the demo's smoke settings."""
    out = Path(out)
    domains = [SOURCE_DOMAIN, *SHIFTED_DOMAINS]
    base = demo_config(out / f"seed{seed}", quick, seed)
    real_images = 16 if quick else 300
    images = images or real_images  # the same scenes as the demo's day column by default
    banks, _ = _mine_banks(base, variants)
    day = f"synthetic:{SOURCE_DOMAIN}:{images}:{10_000 + seed}:size={SIZE}"  # the demo's held-out day scenes
    settings = dataclasses.replace(EVAL, condition_steps=steps)
    rows = {}
    for name in variants:
        cfg = copy.deepcopy(base)
        variant = ABLATION[name]
        cfg.model.freeze, cfg.style.mix = variant.freeze, variant.mix
        cfg.style.bank = banks.get(variant.bank)
        cfg.train.out = str(out / f"seed{seed}" / run_folder(name))
        real = train_and_evaluate(cfg, name, domains, real_images)
        start = time.perf_counter()
        table, _ = evaluate.robustness(
            Path(cfg.train.out) / "latest.pt", [day], list(SHIFTED_DOMAINS), settings, say=lambda _: None
        )
        seconds = time.perf_counter() - start
        rows[name] = {
            "real": {d: real[d]["miou"] for d in domains},
            "day_plain": table[None][day].miou,
            "restyled": {d: table[d][day].miou for d in SHIFTED_DOMAINS},
            "seconds": seconds,
        }
        _say(f"{name}: day scenes restyled ({images}, {steps} steps, {seconds:.0f} s)")
        print(format_robustness(table))
    correlation = correlations(rows)
    return {"variants": rows, "spearman": correlation, "images": images, "steps": steps, "seed": seed}


def markdown(result: dict) -> str:
    """docs/conditions.md's tables: per variant, real and restyled mIoU per domain; Spearman per domain."""
    rows, domains = result["variants"], list(SHIFTED_DOMAINS)
    header = ["variant", "day (real)", "day (these scenes)"]
    header += [f"{d}: real / restyled" for d in domains]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in rows.items():
        cells = [name, f"{r['real'][SOURCE_DOMAIN]:.1f}", f"{r['day_plain']:.1f}"]
        cells += [f"{r['real'][d]:.1f} / {r['restyled'][d]:.1f}" for d in domains]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *spearman_table([result])]
    return "\n".join(lines)


SPEARMAN_ROWS = {
    "restyled": "restyled day vs real, all variants",
    "day": "plain day vs real, all variants (control)",
    "frozen restyled": "restyled day vs real, frozen-backbone variants",
    "frozen day": "plain day vs real, frozen-backbone variants (control)",
}


def spearman_table(results: list[dict]) -> list[str]:
    """Markdown lines: per Spearman row and held-out domain, the value (one result) or the mean +/- sample
    std over the results (seeds) and each seed's value."""
    domains = list(SHIFTED_DOMAINS)
    n = {len(r["variants"]) for r in results}
    frozen = {sum(ABLATION[v].freeze != "none" for v in r["variants"]) for r in results}
    seeds = ", ".join(str(r["seed"]) for r in results)
    lines = [
        f"| Spearman over the variants ({'/'.join(map(str, sorted(n)))} variants, "
        f"{'/'.join(map(str, sorted(frozen)))} frozen; seeds {seeds}) | " + " | ".join(domains) + " |",
        "|---|" + "---|" * len(domains),
    ]
    for key, label in SPEARMAN_ROWS.items():
        cells = []
        for d in domains:
            values = [r["spearman"][d][key] for r in results]
            if len(values) == 1:
                cells.append(f"{values[0]:+.2f}")
            else:
                each = " ".join(f"{v:+.2f}" for v in values)
                cells.append(f"{statistics.mean(values):+.2f} ± {statistics.stdev(values):.2f} ({each})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="famix-demo")
    p.add_argument(
        "--variant",
        action="append",
        choices=list(ABLATION),
        help=f"a variant, repeated (--variant=-/-/-: with '='); default {', '.join(DEFAULT_VARIANTS)}",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--images", type=int, help="held-out day scenes restyled (default 300, the demo's; --quick: 16)"
    )
    p.add_argument("--steps", type=int, default=PIN_STEPS, help=f"PIN steps (default {PIN_STEPS})")
    p.add_argument("--quick", action="store_true", help="the demo's smoke settings (minutes, not a result)")
    p.add_argument(
        "--combine",
        nargs="+",
        metavar="DIR",
        help="print the Spearman table over the conditions.json of these --out folders (one per seed)",
    )
    args = p.parse_args(argv)
    if args.images is not None and args.images < 1:
        p.error(f"--images {args.images}: give a number >= 1")
    if args.combine:
        missing = [d for d in args.combine if not (Path(d) / "conditions.json").is_file()]
        if missing:
            p.error(f"--combine {missing[0]}: no conditions.json there; pass --out folders of finished runs")
        results = [json.loads((Path(d) / "conditions.json").read_text()) for d in args.combine]
        for r in results:  # the correlations of results written before the frozen rows existed
            r["spearman"] = correlations(r["variants"])
        print("\n".join(spearman_table(sorted(results, key=lambda r: r["seed"]))))
        return
    start = time.perf_counter()
    result = measure(
        args.out, args.variant or list(DEFAULT_VARIANTS), args.seed, args.images, args.steps, args.quick
    )
    result["seconds"] = time.perf_counter() - start
    result["machine"] = platform.processor() or platform.machine()
    text = markdown(result)
    save_results(Path(args.out), "conditions", text + "\n", result)


if __name__ == "__main__":
    main()
