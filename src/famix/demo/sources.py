"""``famix demo --sources``: training on two labelled sources against each alone, in the embedded world.

The world's second source is the ``desert`` style (``famix.world.SECOND_SOURCE_DOMAIN``): the same kind of
street in another look, as SYNTHIA is to GTA5, never an evaluation style. For each seed, the demo's FAMix
recipe (mining on the training sources, then the demo's training) on day alone (the demo's own FAMix model:
the same run folder, so either command reuses the other's), on desert alone, and on the list of both
(``data.train=[day, desert]``: shares by size, half of every epoch from each; mining draws from both in
proportion). Every run has the demo's number of iterations, so the two-source run sees each source half as
often. The table (mIoU %, mean +/- std over seeds, paired differences) goes to ``sources_results.md`` /
``.json``; docs/sources.md records it.
"""

from __future__ import annotations

import time
from pathlib import Path

from famix.config import Config
from famix.demo.report import paired_table, save_results
from famix.demo.run import (
    ABLATION,
    BACKBONES,
    FAMIX,
    SIZE,
    _mine_banks,
    demo_config,
    run_folder,
    train_and_evaluate,
)
from famix.world import SECOND_SOURCE_DOMAIN, SHIFTED_DOMAINS, SOURCE_DOMAIN

DAY, SECOND = SOURCE_DOMAIN, SECOND_SOURCE_DOMAIN
BOTH = f"{DAY} + {SECOND}"
ROWS = (DAY, SECOND, BOTH)


def source_specs(row: str, seed: int) -> list[str]:
    """The training specs of a row: the demo's day set (``demo_config``'s ``synthetic:day:2000:SEED``), the
    same scenes in the second source's style, or both (one list)."""
    day = demo_config(Path("."), quick=False, seed=seed).data.train
    second = day.replace(f"synthetic:{DAY}:", f"synthetic:{SECOND}:", 1)
    return {DAY: [day], SECOND: [second], BOTH: [day, second]}[row]


def row_config(out: Path, row: str, quick: bool, seed: int, backbone: str = "rn", amp: str = "off") -> Config:
    """The FAMix run of one row: the demo's config (day: the demo's own folder) on that row's sources, its
    bank mined on them (``famix mine``; reused when finished); ``amp``: mining's and training's run.amp."""
    folder = out / f"seed{seed}" if row == DAY else out / f"seed{seed}" / "sources" / row.replace(" + ", "+")
    cfg = demo_config(folder, quick, seed, backbone)
    specs = source_specs(row, seed)
    cfg.data.train = specs if len(specs) > 1 else specs[0]
    cfg.run.amp = amp
    banks, _ = _mine_banks(cfg, [FAMIX])
    variant = ABLATION[FAMIX]
    cfg.model.freeze, cfg.style.mix, cfg.style.bank = variant.freeze, variant.mix, banks[variant.bank]
    cfg.train.out = str(folder / run_folder(FAMIX))
    return cfg


def run_sources_demo(
    out: str | Path = "famix-demo",
    quick: bool = False,
    seed: int = 0,
    seeds: int = 1,
    backbone: str = "rn",
    amp: str = "off",
) -> dict:
    """Run the two-source demo into ``out`` (sharing the demo's day-only FAMix runs); returns
    {"runs": {row: {seed: {domain: result}}}, "seconds": ...}."""
    out, begin = Path(out), time.perf_counter()
    domains = [SOURCE_DOMAIN, *SHIFTED_DOMAINS]
    n_eval = 16 if quick else 300
    runs: dict[str, dict[int, dict]] = {f"FAMix on {row}": {} for row in ROWS}
    for s in range(seed, seed + seeds):
        for row in ROWS:
            cfg = row_config(out, row, quick, s, backbone, amp)
            runs[f"FAMix on {row}"][s] = train_and_evaluate(cfg, f"FAMix on {row}", domains, n_eval)
    title = (
        f"mIoU (%) on the synthetic world, {BACKBONES[backbone][0]} backbone: the FAMix recipe trained on "
        f"{DAY}, on {SECOND} (the second source, the same scenes in another look) and on both "
        f"(data.train=[{DAY}, {SECOND}], half of every epoch each); {seeds} seed(s)"
    )
    text = paired_table(runs, domains, title, [(f"FAMix on {BOTH}", f"FAMix on {DAY}")])
    save_results(out, "sources_results", text, {"runs": runs, "size": SIZE})
    seconds = time.perf_counter() - begin
    print(f"[famix demo] two sources done in {seconds:.0f} s; tables in {out}/sources_results.md")
    return {"runs": runs, "seconds": seconds}
