"""Miniature-world measurements of issue 32 (item 6): conditions named from images, diagnose, auto-adapt,
several sources. CPU, fp32, the shipped tiny CLIPs; every number comes from the embedded synthetic world.

    python benchmarks/measure_conditions.py ranking  --out M            # table 1: no training
    python benchmarks/measure_conditions.py diagnose --out M --seed 0   # table 2: the demo's FAMix model
    python benchmarks/measure_conditions.py adapt    --out M --seed 0   # table 3: --target auto, wrong word
    python benchmarks/measure_conditions.py sources  --out M --seed 0   # table 4: day + desert vs each alone

Each step writes ``M/<step>[_seed<s>].json`` and prints its markdown table; ``table STEP --out M`` prints the
table of every JSON of a step again (mean +/- sample std over the seeds found). Models are the demo's
(``famix.demo.run.demo_model``, ``M/demo/seed<s>/F_A_M__FAMix/latest.pt``), reused when finished.

Scene seeds (``synthetic:DOMAIN:N:SEED``: scene i is ``SEED * 1_000_003 + i``): training 0-2 (the demo's
seeds), evaluation 10000 + s (the demo's), ranking sets 20000 + k, auto-adapt's target images 30000 + s.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from famix.world import SHIFTED_DOMAINS, SOURCE_DOMAIN

SIZE = 96
DOMAINS = [SOURCE_DOMAIN, *SHIFTED_DOMAINS]
CLIPS = {"ResNet (tiny-clip)": "tiny-clip", "ViT (tiny-vit-clip)": "tiny-vit-clip"}
OPPOSITE = {"night": "fog", "fog": "night", "snow": "rain", "rain": "snow"}  # table 3's wrong word
N_EVAL = 300


def eval_spec(domain: str, seed: int, n: int = N_EVAL) -> str:
    return f"synthetic:{domain}:{n}:{10_000 + seed}:size={SIZE}"


def machine() -> dict:
    """CPU model, its bf16/AVX flags, threads, date: the header of every table."""
    cpu = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
        flags = Path("/proc/cpuinfo").read_text().split()
        found = sorted({f for f in ("amx_bf16", "avx512_bf16", "avx2") if f in flags})
    except OSError:
        found = []
    return {
        "cpu": cpu,
        "flags": found,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def save(out: Path, name: str, payload: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")


def mean_std(values: list[float], digits: int = 1) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


# --- 1. condition ranking --------------------------------------------------------------------------------
def ranking(out: Path, n: int, sets: int) -> dict:
    from famix.engine.conditions import load_clip, rank
    from famix.models.clip import clip_normalization, packaged_weights
    from famix.style.conditions import CONDITIONS
    from famix.world.synthetic import SyntheticDataset

    rows = {}
    for label, name in CLIPS.items():
        weights = packaged_weights(name)
        clip, norm = load_clip(name, weights, "cpu"), clip_normalization(name, weights)
        per_domain = {}
        for domain in DOMAINS:
            runs = []
            for k in range(sets):
                data = SyntheticDataset(domain=domain, length=n, size=(SIZE, SIZE), seed=20_000 + k)
                r = rank(clip, (data[i][0] for i in range(n)), norm)
                picks = [r.texts[j] for j in r.per_image.argmax(1).tolist()]
                runs.append({
                    "scene_seed": 20_000 + k,
                    "image_top1": 100 * sum(p == domain for p in picks) / n,
                    "set_top": r.top,
                    "set_top1": r.top == domain,
                    "picks": {t: picks.count(t) for t in sorted(set(picks), key=picks.count, reverse=True)},
                    "scores": {t: round(s, 4) for t, s in r.scores.items()},
                })  # fmt: skip
            per_domain[domain] = runs
            summary = ", ".join(f"{x['image_top1']:.0f}% set {x['set_top']}" for x in runs)
            print(f"{label} {domain}: {summary}")
        rows[label] = per_domain
    payload = {"machine": machine(), "n": n, "sets": sets, "vocabulary": list(CONDITIONS), "clips": rows}
    save(out, "ranking", payload)
    return payload


def ranking_table(p: dict) -> str:
    lines = [
        f"{p['n']} scenes per set, {p['sets']} disjoint sets (scene seeds 20000-{20000 + p['sets'] - 1}), "
        f"{SIZE} px; vocabulary: {', '.join(p['vocabulary'])}.",
        "",
        "| CLIP | domain | per-image top-1 (%) | set top-1 | set's first word (each set) "
        "| most picked words (all sets) |",
        "|---|---|---|---|---|---|",
    ]
    for label, per_domain in p["clips"].items():
        for domain, runs in per_domain.items():
            picks: dict[str, int] = {}
            for r in runs:
                for t, c in r["picks"].items():
                    picks[t] = picks.get(t, 0) + c
            top = sorted(picks.items(), key=lambda kv: -kv[1])[:3]
            total = sum(picks.values())
            lines.append(
                f"| {label} | {domain} | {mean_std([r['image_top1'] for r in runs])} "
                f"| {sum(r['set_top1'] for r in runs)}/{len(runs)} | {', '.join(r['set_top'] for r in runs)} "
                f"| {', '.join(f'{t} {100 * c / total:.0f}%' for t, c in top)} |"
            )
    return "\n".join(lines)


# --- the demo's models -----------------------------------------------------------------------------------
def demo_checkpoint(out: Path, seed: int) -> Path:
    from famix.demo.run import demo_model

    return Path(demo_model(out / "demo", quick=False, seed=seed))


# --- 2. diagnose -----------------------------------------------------------------------------------------
def diagnose(out: Path, seed: int, n: int) -> dict:
    import famix

    ckpt = demo_checkpoint(out, seed)
    specs = [eval_spec(d, seed, n) for d in DOMAINS]
    start = time.perf_counter()
    folder = out / f"diagnose_seed{seed}"
    report = famix.diagnose(ckpt, specs, out=folder, progress=False, device="cpu", maps=2)
    sets = {
        d: {k: report["sets"][s].get(k) for k in ("miou", "auroc", "ood", "confidence", "entropy")}
        | {"top_condition": next(iter(report["sets"][s]["conditions"]["scores"]))}
        for d, s in zip(DOMAINS, specs, strict=True)
    }
    payload = {
        "machine": machine(),
        "seed": seed,
        "n": n,
        "model": str(ckpt),
        "source": report["source"],
        "source_top_condition": next(iter(report["source_conditions"]["scores"]))
        if report["source_conditions"]
        else None,
        "sets": sets,
        "ood_vs_miou": report["ood_vs_miou"],
        "suggestion": report["suggestion"],
        "seconds": round(time.perf_counter() - start, 1),
    }
    save(out, f"diagnose_seed{seed}", payload)
    return payload


def diagnose_table(ps: list[dict]) -> str:
    seeds = [p["seed"] for p in ps]
    lines = [
        f"The demo's FAMix model (tiny-clip ResNet, 1000 iterations on day), seeds {seeds}; "
        f"{ps[0]['n']} scenes per domain (`synthetic:DOMAIN:{ps[0]['n']}:10000+seed:size={SIZE}`).",
        "",
        "| domain | mIoU (%) | confidence AUROC | out-of-domain score | mean confidence "
        "| CLIP's first word |",
        "|---|---|---|---|---|---|",
    ]
    for d in DOMAINS:
        get = lambda k, d=d: [p["sets"][d][k] for p in ps]  # noqa: E731
        lines.append(
            f"| {d} | {mean_std(get('miou'))} | {mean_std(get('auroc'), 3)} | {mean_std(get('ood'), 2)} "
            f"| {mean_std(get('confidence'), 3)} | {', '.join(get('top_condition'))} |"
        )
    lines += [
        "",
        "| seed | Pearson (ood, mIoU) | Spearman (ood, mIoU) | sets |",
        "|---|---|---|---|",
    ]
    for p in ps:
        c = p["ood_vs_miou"] or {}
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        pearson, spearman = fmt(c.get("pearson")), fmt(c.get("spearman"))
        lines.append(f"| {p['seed']} | {pearson} | {spearman} | {c.get('n', '-')} |")
    if len(ps) > 1:
        from famix.stages.diagnose import correlations

        x = [p["sets"][d]["ood"] for p in ps for d in DOMAINS]
        y = [p["sets"][d]["miou"] for p in ps for d in DOMAINS]
        c = correlations(x, y)
        lines.append(f"| pooled | {c['pearson']:.2f} | {c['spearman']:.2f} | {c['n']} |")
    return "\n".join(lines)


# --- 3. auto-adapt ---------------------------------------------------------------------------------------
def render_targets(folder: Path, domain: str, seed: int, n: int) -> Path:
    """``n`` scenes of ``domain`` as PNG files (scene seeds of ``synthetic:DOMAIN:n:30000+seed``)."""
    from PIL import Image

    from famix.world import render

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"{i:03d}.png"
        if not path.exists():
            image, _ = render((30_000 + seed) * 1_000_003 + i, domain, (SIZE, SIZE))
            Image.fromarray(image).save(path)
    return folder


def adapt_measure(out: Path, seed: int, n_targets: int, domains: list[str]) -> dict:
    from famix.demo.adaptation import adapt_settings
    from famix.demo.run import demo_config, evaluate_run
    from famix.stages import adapt
    from famix.stages.adapt import slug
    from famix.style.conditions import CONDITIONS

    words = {slug(w): w for w in CONDITIONS}

    ckpt = demo_checkpoint(out, seed)
    cfg = demo_config(out / "demo" / f"seed{seed}", quick=False, seed=seed)
    settings = adapt_settings(quick=False, seed=seed)
    base = out / f"adapt_seed{seed}"
    source = evaluate_run(ckpt, "source", seed, DOMAINS, N_EVAL)
    rows, adapted = {}, {}  # adapted: word -> checkpoint (the same word, seed and settings: the same model)
    done = out / f"adapt_seed{seed}.json"
    if done.exists():  # rows of an earlier call with other --domains
        rows = json.loads(done.read_text())["rows"]

    def model_for(word: str) -> Path:
        if word not in adapted:
            folder = base / "words"
            adapted[word] = adapt.run(ckpt, [word], cfg.data.train, folder, cfg.model.weights, settings)[word]
        return adapted[word]

    # first every --target auto run, then the wrong-word rows: an auto run that picked a word is the model
    # adapted to that word (the same source, seed and settings), so the wrong word usually costs no run
    picks = {}
    for domain in domains:
        targets = render_targets(base / "targets" / domain, domain, seed, n_targets)
        start = time.perf_counter()
        result = adapt.run(
            ckpt, ["auto"], cfg.data.train, base / f"auto-{domain}", cfg.model.weights, settings,
            target_data=str(targets),
        )  # fmt: skip
        (path,) = result.values()  # {"auto": <out>/<slug of the word picked>/latest.pt}
        picked = words[Path(path).parent.name]
        adapted.setdefault(picked, path)
        picks[domain] = (picked, path, round(time.perf_counter() - start, 1))
        print(f"seed {seed} {domain}: auto picked {picked!r} ({picks[domain][2]} s)")
    for domain in domains:
        picked, path, seconds = picks[domain]
        auto = evaluate_run(path, f"auto {domain}", seed, [domain], N_EVAL)[domain]
        wrong_word = OPPOSITE[domain] if picked != OPPOSITE[domain] else domain
        wrong = evaluate_run(model_for(wrong_word), wrong_word, seed, [domain], N_EVAL)[domain]
        right = evaluate_run(model_for(domain), domain, seed, [domain], N_EVAL)[domain]
        rows[domain] = {
            "picked": picked,
            "auto_miou": auto["miou"],
            "source_miou": source[domain]["miou"],
            "wrong_word": wrong_word,
            "wrong_miou": wrong["miou"],
            "true_word_miou": right["miou"],
            "auto_seconds": seconds,
        }
        print(f"seed {seed} {domain}: {rows[domain]}")
        payload = {
            "machine": machine(),
            "seed": seed,
            "targets": n_targets,
            "settings": {"iterations": settings.iterations, "images": settings.images, "crop": settings.crop},
            "models": {w: str(p) for w, p in adapted.items()},
            "rows": rows,
        }
        save(out, f"adapt_seed{seed}", payload)  # after every domain: partial work lands
    return payload


def adapt_control(out: Path, seed: int) -> dict:
    """The control of table 3: the same head fine-tuned for the same steps, lr, crops and seed on day crops
    with no restyling (``famix.stages.adapt.control``), on every held-out domain."""
    from famix.demo.adaptation import adapt_settings
    from famix.demo.run import demo_config, evaluate_run
    from famix.stages import adapt

    ckpt = demo_checkpoint(out, seed)
    cfg = demo_config(out / "demo" / f"seed{seed}", quick=False, seed=seed)
    folder = out / f"adapt_seed{seed}" / "control"
    control = adapt.control(ckpt, cfg.data.train, folder, adapt_settings(quick=False, seed=seed))
    results = evaluate_run(control, "control", seed, DOMAINS, N_EVAL)
    payload = {"machine": machine(), "seed": seed, "miou": {d: results[d]["miou"] for d in DOMAINS}}
    save(out, f"control_seed{seed}", payload)
    print(payload)
    return payload


def adapt_table(ps: list[dict], controls: dict[int, dict] | None = None) -> str:
    """Table 3: per held-out domain, mean +/- sample std over the seeds of the source model, the control
    (``controls``: {seed: control JSON}; the seeds that have one), ``--target auto``, the wrong word and the
    domain's own word; then the held-out means and the paired differences per seed."""
    controls = controls or {}
    seeds = [p["seed"] for p in ps]
    lines = [
        f"The demo's FAMix model (seeds {seeds}) adapted with `--target auto` on {ps[0]['targets']} "
        "unlabelled "
        f"target scenes (scene seeds of `synthetic:DOMAIN:{ps[0]['targets']}:30000+seed`), "
        f"{ps[0]['settings']['iterations']} head steps on {ps[0]['settings']['images']} day crops of "
        f"{ps[0]['settings']['crop']} px; mIoU (%) on `synthetic:DOMAIN:{N_EVAL}:10000+seed:size={SIZE}`; "
        f"controls for seeds {sorted(controls)}.",
        "",
        "| domain | auto picked | source model | control: head fine-tuned, no styles | `--target auto` "
        "| wrong word | adapted to the wrong word | auto - source (paired) | wrong - source (paired) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in SHIFTED_DOMAINS:
        rs = [p["rows"][d] for p in ps if d in p["rows"]]
        if not rs:
            lines.append(f"| {d} | not run | | | | | | | |")
            continue
        get = lambda k, rs=rs: [r[k] for r in rs]  # noqa: E731
        control = [c["miou"][d] for c in controls.values()]
        auto_gain = [r["auto_miou"] - r["source_miou"] for r in rs]
        wrong_gain = [r["wrong_miou"] - r["source_miou"] for r in rs]
        lines.append(
            f"| {d} | {', '.join(get('picked'))} | {mean_std(get('source_miou'))} | {mean_std(control)} "
            f"| {mean_std(get('auto_miou'))} | {', '.join(sorted(set(get('wrong_word'))))} "
            f"| {mean_std(get('wrong_miou'))} | {mean_std(auto_gain)} | {mean_std(wrong_gain)} |"
        )
    full = [p for p in ps if all(d in p["rows"] for d in SHIFTED_DOMAINS)]
    if full:
        held = lambda p, k: statistics.mean(p["rows"][d][k] for d in SHIFTED_DOMAINS)  # noqa: E731
        control = [
            statistics.mean(c["miou"][d] for d in SHIFTED_DOMAINS)
            for s, c in controls.items()
            if s in {p["seed"] for p in full}
        ]
        lines.append(
            f"| held-out mean ({len(full)} seeds) | | {mean_std([held(p, 'source_miou') for p in full])} "
            f"| {mean_std(control)} | {mean_std([held(p, 'auto_miou') for p in full])} | "
            f"| {mean_std([held(p, 'wrong_miou') for p in full])} "
            f"| {mean_std([held(p, 'auto_miou') - held(p, 'source_miou') for p in full])} "
            f"| {mean_std([held(p, 'wrong_miou') - held(p, 'source_miou') for p in full])} |"
        )
    return "\n".join(lines)


# --- 4. several sources ----------------------------------------------------------------------------------
def sources(out: Path, seed: int, which: list[str]) -> dict:
    """Table 4's rows ``which`` (day, desert, day + desert) for ``seed``: ``famix demo --sources``'s runs
    (``famix.demo.sources.row_config``; day is the demo's own FAMix model), evaluated on every domain."""
    from famix.demo.run import evaluate_run
    from famix.demo.sources import row_config, source_specs
    from famix.stages import train

    path = out / f"sources_seed{seed}.json"
    payload = json.loads(path.read_text()) if path.exists() else {"seed": seed, "rows": {}}
    for name in which:
        start = time.perf_counter()
        cfg = row_config(out / "demo", name, quick=False, seed=seed)
        train.run(cfg, say=lambda _: None, fix="move the folder away")
        ckpt = Path(cfg.train.out) / "latest.pt"
        results = evaluate_run(ckpt, name, seed, DOMAINS, N_EVAL)
        if path.exists():  # another process may have added a row meanwhile
            payload = json.loads(path.read_text())
        payload["rows"][name] = {
            "train": source_specs(name, seed),
            "miou": {d: results[d]["miou"] for d in DOMAINS},
            "seconds": round(time.perf_counter() - start, 1),
        }
        payload["machine"] = machine()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"seed {seed} {name}: {payload['rows'][name]}")
    return payload


def sources_table(ps: list[dict]) -> str:
    seeds = [p["seed"] for p in ps]
    lines = [
        f"The demo's FAMix recipe (mining on the training sources, 1000 iterations, batch 8), seeds {seeds}; "
        f"mIoU (%) on `synthetic:DOMAIN:{N_EVAL}:10000+seed:size={SIZE}`.",
        "",
        "| trained on | " + " | ".join(DOMAINS) + " | held-out mean |",
        "|---|" + "---|" * (len(DOMAINS) + 1),
    ]
    for name in ("day", "desert", "day + desert"):
        rs = [p["rows"][name] for p in ps if name in p["rows"]]
        if not rs:
            lines.append(f"| {name} | " + " | ".join("not run" for _ in DOMAINS) + " | |")
            continue
        cells = [mean_std([r["miou"][d] for r in rs]) for d in DOMAINS]
        held = mean_std([statistics.mean(r["miou"][d] for d in SHIFTED_DOMAINS) for r in rs])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {held} |")
    for a, b in (("day + desert", "day"), ("day + desert", "desert")):
        pairs = [(p["rows"][a], p["rows"][b]) for p in ps if a in p["rows"] and b in p["rows"]]
        if pairs:
            cells = [mean_std([x["miou"][d] - y["miou"][d] for x, y in pairs]) for d in DOMAINS]
            held = mean_std([
                statistics.mean(x["miou"][d] - y["miou"][d] for d in SHIFTED_DOMAINS) for x, y in pairs
            ])  # fmt: skip
            lines.append(f"| {a} - {b} (paired, {len(pairs)} seeds) | " + " | ".join(cells) + f" | {held} |")
    return "\n".join(lines)


TABLES = {
    "ranking": lambda ps, out: ranking_table(ps[0]),
    "diagnose": lambda ps, out: diagnose_table(ps),
    "adapt": lambda ps, out: adapt_table(
        ps, {c["seed"]: c for c in (json.loads(p.read_text()) for p in out.glob("control_seed*.json"))}
    ),  # fmt: skip
    "sources": lambda ps, out: sources_table(ps),
}


def table(step: str, out: Path) -> str:
    name = "ranking.json" if step == "ranking" else f"{step}_seed*.json"
    ps = sorted((json.loads(p.read_text()) for p in out.glob(name)), key=lambda p: p.get("seed", 0))
    m = ps[0]["machine"]
    head = (
        f"Machine: {m['cpu']} ({', '.join(m['flags'])}), torch {m['torch']}, "
        f"{m['torch_threads']} threads; {m['date']}."
    )
    return head + "\n\n" + TABLES[step](ps, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=["ranking", "diagnose", "adapt", "control", "sources", "table"])
    parser.add_argument("which", nargs="?", help="table: the step; sources: comma-separated rows")
    parser.add_argument("--out", type=Path, default=Path("measure-conditions"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=None, help="images per set (ranking 50, diagnose 300)")
    parser.add_argument("--sets", type=int, default=3, help="ranking: disjoint scene sets")
    parser.add_argument("--targets", type=int, default=16, help="adapt: target images per domain")
    parser.add_argument("--domains", default=",".join(SHIFTED_DOMAINS), help="adapt: held-out domains")
    parser.add_argument("--threads", type=int, default=None)
    a = parser.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.step == "table":
        print(table(a.which, a.out))
        return
    if a.step == "ranking":
        ranking(a.out, a.n or 50, a.sets)
    elif a.step == "diagnose":
        diagnose(a.out, a.seed, a.n or N_EVAL)
    elif a.step == "adapt":
        adapt_measure(a.out, a.seed, a.targets, a.domains.split(","))
    elif a.step == "control":
        adapt_control(a.out, a.seed)
        return
    elif a.step == "sources":
        sources(a.out, a.seed, (a.which or "day,desert,day + desert").split(","))
    print(table(a.step, a.out))


if __name__ == "__main__":
    main()
