"""``famix demo``: the whole FAMix recipe on the embedded synthetic world, on a CPU, in minutes.

Mine a style bank on the "day" source domain with a tiny CLIP, train FAMix and a plain baseline on day,
evaluate both on day and on the shifted domains, print the table, save it (markdown, JSON) and a chart.
The same code paths as real use; only data and weights differ.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from torch.utils.data import DataLoader

from famix.config import Config, save_config
from famix.data.datasets import Normalized, build_dataset
from famix.data.synthetic import SHIFTED_DOMAINS, SOURCE_DOMAIN
from famix.engine.evaluate import evaluate
from famix.engine.mine import mine
from famix.engine.results import format_table
from famix.engine.train import train
from famix.io import atomic_write


def demo_config(out: Path, quick: bool, seed: int) -> Config:
    cfg = Config()
    cfg.model.backbone, cfg.model.freeze = "tiny-rn", "last-block"
    cfg.data.train, cfg.data.val = f"synthetic:{SOURCE_DOMAIN}:2000:{seed}", []
    cfg.data.synthetic_size, cfg.data.crop, cfg.data.batch_size, cfg.data.workers = 96, 64, 8, 0
    cfg.mine.out, cfg.mine.crop, cfg.mine.batch_size = str(out / "bank.safetensors"), 64, 16
    # Random CLIP weights give layer1 features of tiny scale (~0.01), so the paper's lr 0.1 would wipe them
    # out; a small lr keeps mined styles in range until the demo gets a pretrained tiny CLIP.
    cfg.mine.steps, cfg.mine.lr, cfg.mine.max_images = (5, 1e-3, 16) if quick else (20, 1e-3, 64)
    cfg.train.iterations = 20 if quick else 250
    cfg.train.val_interval = cfg.train.iterations
    cfg.train.lr, cfg.train.amp, cfg.train.device, cfg.train.seed = 0.05, "off", "cpu", seed
    cfg.train.log_interval = 10
    return cfg


def run_demo(out: str | Path = "famix-demo", quick: bool = False, seed: int = 0) -> dict:
    """Run the demo into ``out``; returns {variant: {domain: mIoU}}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cfg = demo_config(out, quick, seed)
    print(f"[famix demo] mining styles on synthetic {SOURCE_DOMAIN} with a tiny CLIP ({cfg.model.backbone})")
    bank = mine(cfg)
    print(f"[famix demo] bank: {len(bank)} styles, per class {json.dumps(bank.counts())}")
    variants = {"baseline": ("none", None), "FAMix": ("famix", cfg.mine.out)}
    domains = [SOURCE_DOMAIN, *SHIFTED_DOMAINS]
    n_eval = 16 if quick else 100
    table: dict[str, dict[str, float]] = {}
    for name, (mix, bank_path) in variants.items():
        cfg.style.mix, cfg.style.bank, cfg.train.out = mix, bank_path, str(out / name)
        print(f"[famix demo] training {name} ({cfg.train.iterations} iterations)")
        train(cfg)
        from famix.engine.inference import load_segmenter

        model, _ = load_segmenter(str(out / name / "latest.pt"))
        results = {}
        for domain in domains:
            ds = Normalized(
                build_dataset(f"synthetic:{domain}:{n_eval}:{10_000 + seed}", cfg.data.synthetic_size)
            )
            results[domain] = evaluate(model, DataLoader(ds, batch_size=8), progress=False)
        table[name] = {d: r.miou for d, r in results.items()}
        print(format_table(results))
    report = _report(table, domains)
    print(report)
    atomic_write(out / "results.md", lambda p: p.write_text(report))
    atomic_write(out / "results.json", lambda p: p.write_text(json.dumps(table, indent=1)))
    save_config(cfg, out / "config.yaml")
    _chart(table, domains, out / "results.png")
    print(f"[famix demo] done in {time.perf_counter() - start:.0f} s; table, chart and runs in {out}/")
    return table


def _report(table: dict[str, dict[str, float]], domains: list[str]) -> str:
    shifted = [d for d in domains if d != SOURCE_DOMAIN]
    head = "| variant | " + " | ".join(domains) + " | shifted mean |\n|---|" + "---|" * (len(domains) + 1)
    rows = [
        f"| {name} | "
        + " | ".join(f"{100 * r[d]:.1f}" for d in domains)
        + f" | {100 * sum(r[d] for d in shifted) / len(shifted):.1f} |"
        for name, r in table.items()
    ]
    return "mIoU (%) on the synthetic world, trained on day only\n\n" + "\n".join([head, *rows]) + "\n"


def _chart(table: dict[str, dict[str, float]], domains: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(table)
    for i, (name, r) in enumerate(table.items()):
        ax.bar([j + i * width for j in range(len(domains))], [100 * r[d] for d in domains], width, label=name)
    ax.set_xticks([j + width * (len(table) - 1) / 2 for j in range(len(domains))], domains)
    ax.set_ylabel("mIoU (%)")
    ax.set_title("famix demo: trained on day, tested on unseen domains")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
