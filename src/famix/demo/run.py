"""``famix demo``: the whole FAMix recipe on the embedded synthetic world, on a CPU, in minutes.

Mine a style bank on the "day" source domain with a tiny CLIP, train FAMix and a plain baseline on day,
evaluate on day and on held-out domains, print the table, save it (markdown, JSON), a chart and a grid of
predictions. ``--ablation`` runs the paper's Freeze/Augment/Mix grid plus two controls ("un-optimised
styles", "fine-grid bank") over several seeds. Finished runs are reused when the command is run again.
The same code paths as real use; only data and weights differ.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import NamedTuple

from famix.config import Config, save_config
from famix.demo.report import bank_table, chart, prediction_grid, report, save_results
from famix.engine.runs import State
from famix.models.clip import packaged_weights
from famix.settings import EvalSettings
from famix.stages import evaluate, mine, train
from famix.world import MINING_DOMAINS, SHIFTED_DOMAINS, SOURCE_DOMAIN

SIZE = 96  # scene side in pixels


# name -> (freeze preset, mix mode, bank): the paper's grid (method.md section 7) and one control.
# "-" in Freeze = full fine-tuning; bank "mined" = PIN-optimised styles, "raw" = the patches' own styles,
# "fine" = PIN-optimised on a 6x6 grid with at most 4 patches per class per batch, so that thin, rare
# classes (pole, traffic sign, person) get styles of their own.
class Variant(NamedTuple):
    """One row of the grid: ``model.freeze``, ``style.mix`` and the bank it mixes with (None: no bank)."""

    freeze: str
    mix: str
    bank: str | None


ABLATION = {
    "-/-/-": Variant(freeze="none", mix="none", bank=None),
    "-/A/-": Variant(freeze="none", mix="augment", bank="mined"),
    "-/-/M": Variant(freeze="none", mix="mixstyle", bank=None),
    "-/A/M": Variant(freeze="none", mix="famix", bank="mined"),
    "F/-/-": Variant(freeze="last-block", mix="none", bank=None),
    "F/A/-": Variant(freeze="last-block", mix="augment", bank="mined"),
    "F/-/M": Variant(freeze="last-block", mix="mixstyle", bank=None),
    "F/A/M (FAMix)": Variant(freeze="last-block", mix="famix", bank="mined"),
    "F/A/M, un-optimised styles": Variant(freeze="last-block", mix="famix", bank="raw"),
    "F/A/M, fine-grid bank": Variant(freeze="last-block", mix="famix", bank="fine"),
}
DEFAULT_VARIANTS = ("F/-/-", "F/A/M (FAMix)")
# --backbone: the shipped tiny CLIPs (model cards in famix/assets) and their segmenters' output stride
# (the ResNet dilated to 16; the ViT's is its patch size, 8)
BACKBONES = {"rn": ("tiny-clip", 16), "vit": ("tiny-vit-clip", 8)}
BASELINE, FAMIX, LANGUAGE_FREE = "F/-/-", "F/A/M (FAMix)", "F/-/M"
FINE_GRID = "F/A/M, fine-grid bank"
FIX = "Pass another --out, or move that folder away"  # what a refused run folder asks of the demo's user
# The demo's evaluation: the CPU, float32, 16 scenes a batch
EVAL = EvalSettings(amp="off", device="cpu", batch_size=16)


def _say(message: str) -> None:
    print(f"[famix demo] {message}")


def demo_config(out: Path, quick: bool, seed: int, backbone: str = "rn") -> Config:
    """The demo's settings: the shipped tiny CLIP (``BACKBONES[backbone]``), synthetic day source, CPU.

    Mining keeps the paper's optimiser (SGD lr 0.1, momentum 0.9, 100 steps) and 3x3 grid on 64 day crops;
    its vocabulary names the mining styles (``MINING_DOMAINS``), never an evaluation style. Settings were
    chosen on day and the mining-word styles only (docs/demo.md), never on the held-out domains.
    """
    cfg = Config()
    if backbone not in BACKBONES:
        raise ValueError(f"demo backbone {backbone!r}: choose one of {', '.join(BACKBONES)}")
    name, cfg.model.output_stride = BACKBONES[backbone]
    cfg.model.backbone, cfg.model.weights = name, packaged_weights(name)
    cfg.data.train = f"synthetic:{SOURCE_DOMAIN}:2000:{seed}:size={SIZE}"
    cfg.data.val = []
    cfg.data.crop = 64
    cfg.data.batch_size = 8
    cfg.data.workers = 0
    cfg.style.bank = str(out / "bank.safetensors")
    cfg.mine.crop = 64
    cfg.mine.batch_size = 16
    cfg.mine.vocabulary = list(MINING_DOMAINS)
    cfg.mine.steps = 5 if quick else 100
    cfg.mine.max_images = 16 if quick else 64
    cfg.train.iterations = 20 if quick else 1000
    cfg.train.val_interval = cfg.train.iterations
    cfg.train.lr = 0.05
    cfg.train.log_interval = 10
    cfg.run.amp = "off"
    cfg.run.device = "cpu"
    cfg.run.seed = seed
    return cfg


def run_demo(
    out: str | Path = "famix-demo",
    quick: bool = False,
    seed: int = 0,
    ablation: bool = False,
    seeds: int = 1,
    backbone: str = "rn",
    amp: str = "off",
) -> dict:
    """Run the demo into ``out``; returns {"runs": {variant: {seed: {domain: result dict}}}, ...}. ``amp``:
    mining's and training's ``run.amp`` (off: fp32, as the recorded tables; auto: bf16 where native)."""
    out, start = Path(out), time.perf_counter()
    variants = list(ABLATION) if ablation else list(DEFAULT_VARIANTS)
    if backbone == "vit":  # its 8 x 8 style map (64-px crops, patch 8) has no 6 x 6 grid of patches
        variants = [v for v in variants if v != FINE_GRID]
    domains = [SOURCE_DOMAIN, *SHIFTED_DOMAINS]
    n_eval = 16 if quick else 300
    runs: dict[str, dict[int, dict[str, dict]]] = {v: {} for v in variants}
    counts: dict[int, dict[str, dict[str, int]]] = {}
    for s in range(seed, seed + seeds):
        base = demo_config(out / f"seed{s}", quick, s, backbone)
        base.run.amp = amp
        banks, counts[s] = _mine_banks(base, variants)
        for name in variants:
            variant = ABLATION[name]
            cfg = copy.deepcopy(base)
            cfg.model.freeze, cfg.style.mix = variant.freeze, variant.mix
            cfg.style.bank = banks.get(variant.bank)
            cfg.train.out = str(out / f"seed{s}" / run_folder(name))
            runs[name][s] = train_and_evaluate(cfg, name, domains, n_eval)
        save_config(base, out / f"seed{s}" / "config.yaml")
    text = report(runs, domains, BASELINE, FAMIX, LANGUAGE_FREE, BACKBONES[backbone][0]) + bank_table(counts)
    save_results(out, "results", text, {"runs": runs, "bank_counts": counts})
    chart(runs, domains, out / "results.png")
    prediction_grid(
        out,
        seed,
        domains,
        [BASELINE, FAMIX] if BASELINE in variants else variants[:2],
        run_folder,
        SIZE,
    )
    print(f"[famix demo] done in {time.perf_counter() - start:.0f} s; tables, chart, predictions in {out}/")
    return {"runs": runs, "seconds": time.perf_counter() - start}


def _mine_banks(cfg: Config, variants: list[str]) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Mine the banks the variants need (``famix mine``: finished ones are reused, interrupted ones resume):
    ({kind: path}, {kind: per-class counts})."""
    kinds = {ABLATION[v].bank for v in variants} - {None}
    banks, counts = {}, {}
    for kind in sorted(kinds):
        c = copy.deepcopy(cfg)
        c.style.bank = str(Path(cfg.style.bank).with_name(f"bank_{kind}.safetensors"))
        if kind == "raw":
            c.mine.steps = 0  # the control: each patch's own statistics, no language
        if kind == "fine":
            c.mine.grid, c.mine.per_class, c.mine.max_images = 6, 4, 3 * cfg.mine.max_images
        finished = mine.status(c, FIX).done
        if finished:
            _say(f"{kind} styles: reusing the finished bank {c.style.bank}")
        else:
            _say(f"mining {kind} styles on synthetic {SOURCE_DOMAIN} with {cfg.model.backbone}")
        bank = mine.run(c, progress=not finished, say=lambda _: None, fix=FIX)
        counts[kind] = {k: v for k, v in bank.counts().items() if v}
        _say(f"{kind} bank: {len(bank)} styles, per class {json.dumps(counts[kind])}")
        banks[kind] = c.style.bank
    return banks, counts


def train_and_evaluate(cfg: Config, name: str, domains: list[str], n_eval: int) -> dict[str, dict]:
    """Train one variant (``famix train``: a finished run is reused, an interrupted one resumes, a folder
    holding another run is refused) and evaluate it on every domain (``famix eval``, cached)."""
    run, seed, iterations = Path(cfg.train.out), cfg.run.seed, cfg.train.iterations
    state = train.status(cfg, FIX)
    if state.done:
        _say(f"seed {seed}: {name}: reusing the finished run in {run}")
    elif not state.refused:
        resume = f", {state}" if state.state is State.RESUME else ""
        _say(f"seed {seed}: training {name} ({iterations} iterations{resume})")
    train.run(cfg, say=lambda _: None, fix=FIX)
    return evaluate_run(run / "latest.pt", name, seed, domains, n_eval)


def evaluate_run(checkpoint: Path, name: str, seed: int, domains: list[str], n_eval: int) -> dict:
    """``checkpoint`` evaluated on ``n_eval`` held-out scenes of every domain: {domain: result dict} (each
    cached beside the checkpoint by ``famix eval``'s stage)."""
    # held-out scenes: scene seeds never trained on; one progress bar per domain
    specs = {d: f"synthetic:{d}:{n_eval}:{10_000 + seed}:size={SIZE}" for d in domains}
    if all(evaluate.is_cached(checkpoint, spec, EVAL) for spec in specs.values()):
        _say(f"seed {seed}: {name}: reusing its evaluation ({evaluate.cache_path(checkpoint).name})")
    else:
        _say(f"seed {seed}: evaluating {name} on {', '.join(domains)} ({n_eval} images each)")
    scores, _ = evaluate.run(checkpoint, list(specs.values()), EVAL, say=lambda _: None)
    results = {d: scores[spec].to_dict() for d, spec in specs.items()}
    summary = ", ".join(f"{d} {results[d]['miou']:.1f}" for d in domains)
    _say(f"seed {seed}: {name}: mIoU (%) {summary}")
    return results


def run_folder(name: str) -> str:
    """A variant's run folder name: "F/A/M (FAMix)" -> "F_A_M__FAMix"; "-/-/-" (no letters) -> "finetune"."""
    return "".join(c if c.isalnum() else "_" for c in name).strip("_") or "finetune"


def demo_model(
    out: str | Path = "famix-demo", quick: bool = False, seed: int = 0, backbone: str = "rn"
) -> Path:
    """The demo's FAMix model of ``seed`` (``<out>/seed<seed>/F_A_M__FAMix/latest.pt``, the checkpoint
    ``famix demo`` trains): reused when finished, else its bank mined and the model trained (the same run
    ``famix demo`` makes, so either command reuses the other's). ``famix app --demo`` serves it."""
    cfg = demo_config(Path(out) / f"seed{seed}", quick, seed, backbone)
    banks, _ = _mine_banks(cfg, [FAMIX])
    variant = ABLATION[FAMIX]
    cfg.model.freeze, cfg.style.mix, cfg.style.bank = variant.freeze, variant.mix, banks[variant.bank]
    cfg.train.out = str(Path(out) / f"seed{seed}" / run_folder(FAMIX))
    if train.status(cfg, FIX).done:
        _say(f"seed {seed}: {FAMIX}: reusing the finished run in {cfg.train.out}")
    else:
        _say(f"seed {seed}: training {FAMIX} ({cfg.train.iterations} iterations)")
    train.run(cfg, say=lambda _: None, fix=FIX)
    return Path(cfg.train.out) / "latest.pt"
