"""``famix demo --adapt WORDS``: PODA-style adaptation (``famix adapt``) on the embedded world.

For each seed: the demo's source-only model (``F/-/-``, trained on day; reused when the demo made it) is
adapted to a target named only in words (default "night", one of the held-out styles; no image of it is
used) and evaluated beside its starting point on every domain. A control fine-tunes the same head for the
same steps on day crops with no restyling, so that "more head training" is not read as adaptation. The
table (mean +/- std over seeds, paired deltas) goes to ``adapt_results.md`` / ``.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

from famix.demo.report import adapt_report, save_results
from famix.demo.run import (
    ABLATION,
    BACKBONES,
    BASELINE,
    SIZE,
    demo_config,
    evaluate_run,
    run_folder,
    train_and_evaluate,
)
from famix.stages import adapt
from famix.stages.adapt import AdaptSettings, slug
from famix.world import SHIFTED_DOMAINS, SOURCE_DOMAIN

START, CONTROL = f"start: {BASELINE}", "control: head fine-tuned, no styles"


def adapt_settings(quick: bool, seed: int, recipe: str = "poda") -> AdaptSettings:
    """The demo's adaptation: ``famix adapt``'s default recipe, PODA's (image-level PIN in batches of 16,
    100 SGD steps at lr 1 on the batch-mean loss; fine-tuning without jitter, flip or label smoothing) on 64
    day crops of 64 pixels, then 500 head-only steps at lr 0.01, batch 8 (the demo's sizes, not PODA's
    768 / 2000). ``recipe="famix"``: the recipe recorded before PODA's became the default (per-image PIN
    at lr 0.01, chosen on validation only: seed 0's model adapted to "sepia", a mining-word style,
    docs/demo.md)."""
    if quick:
        return AdaptSettings(
            iterations=10,
            steps=5,
            images=16,
            crop=64,
            batch_size=8,
            seed=seed,
            device="cpu",
            amp="off",
            ckpt_interval=10,
        )
    pin_lr = 0.01 if recipe == "famix" else None  # None: PODA's lr 1
    return AdaptSettings(
        recipe=recipe, iterations=500, pin_lr=pin_lr, images=64, crop=64, batch_size=8, seed=seed,
        device="cpu", amp="off",
    )  # fmt: skip


def run_adapt_demo(
    out: str | Path = "famix-demo",
    target: str = "night",
    quick: bool = False,
    seed: int = 0,
    seeds: int = 3,
    backbone: str = "rn",
) -> dict:
    """Run the adaptation demo into ``out`` (sharing the demo's source-only runs); returns
    {"runs": {row: {seed: {domain: result}}}, "seconds": ...}."""
    out, begin = Path(out), time.perf_counter()
    domains = [SOURCE_DOMAIN, *SHIFTED_DOMAINS]
    n_eval = 16 if quick else 300
    adapted_row = f"adapted to {target!r}"
    runs: dict[str, dict[int, dict]] = {START: {}, adapted_row: {}, CONTROL: {}}
    for s in range(seed, seed + seeds):
        cfg = demo_config(out / f"seed{s}", quick, s, backbone)
        cfg.model.freeze, cfg.style.mix = ABLATION[BASELINE].freeze, ABLATION[BASELINE].mix  # no bank
        cfg.style.bank = None
        cfg.train.out = str(out / f"seed{s}" / run_folder(BASELINE))
        runs[START][s] = train_and_evaluate(cfg, BASELINE, domains, n_eval)
        start = Path(cfg.train.out) / "latest.pt"
        settings = adapt_settings(quick, s)
        print(f"[famix demo] seed {s}: adapting {BASELINE} to {target!r} ({settings.iterations} head steps)")
        folder = out / f"seed{s}" / "adapt"
        adapted = adapt.run(start, [target], cfg.data.train, folder, cfg.model.weights, settings)
        runs[adapted_row][s] = evaluate_run(adapted[target], adapted_row, s, domains, n_eval)
        control = adapt.control(start, cfg.data.train, folder / f"{slug(target)}-control", settings)
        runs[CONTROL][s] = evaluate_run(control, CONTROL, s, domains, n_eval)
    deltas = [(adapted_row, START), (adapted_row, CONTROL)]
    text = adapt_report(runs, domains, target, START, deltas, BACKBONES[backbone][0])
    save_results(out, "adapt_results", text, {"target": target, "runs": runs, "size": SIZE})
    seconds = time.perf_counter() - begin
    print(f"[famix demo] adaptation done in {seconds:.0f} s; tables in {out}/adapt_results.md")
    return {"runs": runs, "seconds": time.perf_counter() - begin}
