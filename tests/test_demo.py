"""The demo: report arithmetic (against plain loops), the bank table, the labelled prediction grid, and a
quick end-to-end run that is reused, not redone, when run again (and says so)."""

import os
import statistics

import numpy as np
import pytest
import torch
from PIL import Image

from famix.demo import run as demo
from famix.demo.adaptation import CONTROL, START, run_adapt_demo
from famix.demo.report import GROUPS, adapt_report, bank_table, labelled_grid, report
from famix.demo.run import ABLATION, BASELINE, DEFAULT_VARIANTS, FAMIX, run_demo, run_folder
from famix.engine.checkpoint import load_checkpoint
from famix.io import file_fingerprint
from famix.stages import evaluate as evaluate_stage
from famix.stages import train as train_stage
from famix.style.bank import StyleBank

os.environ["HF_HUB_OFFLINE"] = "1"
DOMAINS = ["day", "night", "fog", "snow", "rain"]


def _runs(values: dict[str, list[dict[str, float]]]) -> dict:
    """{variant: [ {domain: mIoU %} per seed ]} -> the demo's runs layout."""
    return {
        v: {s: {d: {"miou": m} for d, m in per.items()} for s, per in enumerate(seeds)}
        for v, seeds in values.items()
    }


def test_report_rows_are_means_over_seeds_and_deltas_are_paired():
    import random

    rng = random.Random(0)
    values = {
        v: [{d: 100 * rng.random() for d in DOMAINS} for _ in range(3)] for v in (BASELINE, "F/-/M", FAMIX)
    }
    text = report(_runs(values), DOMAINS, BASELINE, FAMIX, "F/-/M")
    for v, seeds in values.items():
        held = [sum(s[d] for d in DOMAINS[1:]) / 4 for s in seeds]
        structure = [sum(s[d] for d in GROUPS["structure-like"]) / 3 for s in seeds]
        row = next(line for line in text.splitlines() if line.startswith(f"| {v} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[-1] == f"{statistics.mean(held):.1f} +/- {statistics.stdev(held):.1f}"
        assert cells[-2] == f"{statistics.mean(structure):.1f} +/- {statistics.stdev(structure):.1f}"
        night = [s["night"] for s in seeds]
        assert cells[2] == f"{statistics.mean(night):.1f} +/- {statistics.stdev(night):.1f}"
    for other in (BASELINE, "F/-/M"):
        expected = ", ".join(
            f"{(sum(a[d] for d in DOMAINS[1:]) - sum(b[d] for d in DOMAINS[1:])) / 4:+.1f}"
            for a, b in zip(values[FAMIX], values[other], strict=True)
        )
        assert f"FAMix - {other}, held-out mean, per seed: {expected}" in text


def test_every_variant_gets_its_own_run_folder():
    folders = [run_folder(name) for name in ABLATION]
    assert len(set(folders)) == len(folders)
    assert all(f and "/" not in f and f not in (".", "..") for f in folders)


def test_bank_table_lists_every_class_with_styles():
    text = bank_table({0: {"mined": {"road": 5, "pole": 2}}, 1: {"mined": {"road": 4, "person": 1}}})
    lines = text.strip().splitlines()
    assert lines[2] == "| seed | bank | road | pole | person |"
    assert lines[4] == "| 0 | mined | 5 | 2 | 0 |"
    assert lines[5] == "| 1 | mined | 4 | 0 | 1 |"


def _has_text(strip: np.ndarray) -> bool:
    """Dark label pixels on the white margin."""
    return bool((strip == 255).all(-1).any() and (strip.max(-1) < 128).any())


def test_labelled_grid_adds_label_margins_with_text():
    rng = np.random.default_rng(0)
    rows, cols = ["day", "night", "fog"], ["image", "ground truth", "F/A/M, un-optimised styles"]
    h, w = 24, 64
    cells = [[rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in cols] for _ in rows]
    out = labelled_grid(cells, rows, cols)
    bare = np.concatenate([np.concatenate(r, axis=1) for r in cells], axis=0)
    top, left = out.shape[0] - bare.shape[0], out.shape[1] - bare.shape[1]
    assert top > 0 and left > 0 and out.dtype == np.uint8
    np.testing.assert_array_equal(out[top:, left:], bare)  # the cells, untouched, below and right of labels
    for j in range(len(cols)):
        assert _has_text(out[:top, left + j * w : left + (j + 1) * w]), cols[j]
    for i in range(len(rows)):
        assert _has_text(out[top + i * h : top + (i + 1) * h, :left]), rows[i]
    assert (out[:top, :left] == 255).all()  # the corner stays blank
    with pytest.raises(ValueError, match="labels"):
        labelled_grid(cells, rows[:2], cols)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """A quick demo run (shared: it takes about a minute): its folder and its returned results."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    return out, run_demo(out, quick=True)


def test_quick_demo_writes_its_outputs_and_reuses_finished_runs(quick_demo, monkeypatch):
    out, first = quick_demo
    for name in ("results.md", "results.json", "results.png", "predictions.png", "seed0/config.yaml"):
        assert (out / name).is_file(), name
    text = (out / "results.md").read_text()
    assert all(f"| {v} |" in text for v in DEFAULT_VARIANTS)
    assert "Style bank: mined styles per dominant class" in text
    with Image.open(out / "predictions.png") as picture:  # labelled: larger than the bare grid
        width, height = picture.size
    assert width > (2 + len(DEFAULT_VARIANTS)) * demo.SIZE and height > len(DOMAINS) * demo.SIZE
    checkpoint = out / "seed0" / "F_A_M__FAMix" / "latest.pt"
    stamp = checkpoint.stat().st_mtime_ns

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a cached evaluation was recomputed")

    monkeypatch.setattr(evaluate_stage, "evaluate_specs", no_evaluation)
    monkeypatch.setattr(train_stage, "train", no_evaluation)
    second = run_demo(out, quick=True)  # finished runs are reused: nothing retrained nor re-evaluated
    assert checkpoint.stat().st_mtime_ns == stamp
    assert second["runs"] == first["runs"]

    quick_config = demo.demo_config

    def other_training(out, quick, seed, backbone):  # same mining settings (banks resume), another lr
        cfg = quick_config(out, quick, seed, backbone)
        cfg.train.lr *= 2
        return cfg

    monkeypatch.setattr(demo, "demo_config", other_training)
    with pytest.raises(FileExistsError, match="holds a run made with other settings"):
        run_demo(out, quick=True)  # a run folder is never overwritten by, or mixed with, other settings
    assert checkpoint.stat().st_mtime_ns == stamp


def test_quick_demo_rerun_says_it_reuses_runs_without_training(quick_demo, monkeypatch, capsys):
    out, first = quick_demo

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train_stage, "train", no_training)
    capsys.readouterr()
    assert run_demo(out, quick=True)["runs"] == first["runs"]
    printed = capsys.readouterr().out
    for name in DEFAULT_VARIANTS:
        assert f"seed 0: {name}: reusing the finished run in {out / 'seed0' / run_folder(name)}" in printed
        assert f"seed 0: {name}: reusing its evaluation" in printed
    assert "mined styles: reusing the finished bank" in printed
    assert "training" not in printed and "iterations)" not in printed


def test_adapt_report_deltas_are_paired_per_seed():
    import random

    rng = random.Random(1)
    values = {v: [{d: 100 * rng.random() for d in DOMAINS} for _ in range(3)] for v in ("start", "adapted")}
    text = adapt_report(_runs(values), DOMAINS, "night", "start", [("adapted", "start")])
    row = next(line for line in text.splitlines() if line.startswith("| adapted - start (paired) |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    night = [a["night"] - b["night"] for a, b in zip(values["adapted"], values["start"], strict=True)]
    assert cells[2] == f"{statistics.mean(night):+.1f} +/- {statistics.stdev(night):.1f}"
    held = [
        sum(a[d] - b[d] for d in DOMAINS[1:]) / 4
        for a, b in zip(values["adapted"], values["start"], strict=True)
    ]
    assert cells[-1] == f"{statistics.mean(held):+.1f} +/- {statistics.stdev(held):.1f}"


def test_quick_adapt_demo_starts_from_the_demo_model(quick_demo, monkeypatch):
    out, first = quick_demo
    result = run_adapt_demo(out, "night", quick=True, seeds=1)  # the demo's source-only run is reused
    assert result["runs"][START][0] == first["runs"][BASELINE][0]
    text = (out / "adapt_results.md").read_text()
    assert "| adapted to 'night' |" in text and f"| {CONTROL} |" in text
    adapted = load_checkpoint(out / "seed0" / "adapt" / "night" / "latest.pt")
    bank = StyleBank.load(out / "seed0" / "adapt" / "night" / "styles.safetensors")
    assert adapted["run"]["kind"] == "adapt" and bank.metadata["run"]["settings"]["target"] == "night"
    assert adapted["run"]["inputs"]["bank"] == file_fingerprint(
        out / "seed0" / "adapt" / "night" / "styles.safetensors"
    )
    start = load_checkpoint(out / "seed0" / run_folder(BASELINE) / "latest.pt")["model_state"]
    backbone = [k for k in start if k.startswith("backbone.")]
    assert all(torch.equal(adapted["model_state"][k], start[k]) for k in backbone)


def test_quick_vit_demo_runs_on_the_tiny_vit_clip(tmp_path):
    out = tmp_path / "vit"
    result = run_demo(out, quick=True, backbone="vit")
    assert set(result["runs"]) == set(DEFAULT_VARIANTS)
    assert "tiny-vit-clip backbone" in (out / "results.md").read_text()
    ckpt = load_checkpoint(out / "seed0" / run_folder(FAMIX) / "latest.pt")
    assert (
        ckpt["config"]["model"]["backbone"] == "tiny-vit-clip"
        and ckpt["config"]["model"]["output_stride"] == 8
    )
    assert StyleBank.load(out / "seed0" / "bank_mined.safetensors").channels == 96  # the ViT's width


def test_quick_sources_demo_trains_on_both_sources_beside_each_alone(quick_demo):
    """`famix demo --sources`: the day row is the demo's own FAMix run (reused, not trained again); the
    two-source run's config and record hold both specs; its bank holds styles mined on both sources, in
    proportion; the paired row is the rows' difference."""
    from famix.demo.sources import BOTH, DAY, SECOND, run_sources_demo, source_specs

    out, first = quick_demo
    day_ckpt = out / "seed0" / run_folder(FAMIX) / "latest.pt"
    before = file_fingerprint(day_ckpt)
    result = run_sources_demo(out, quick=True)
    assert file_fingerprint(day_ckpt) == before
    assert result["runs"][f"FAMix on {DAY}"][0] == first["runs"][FAMIX][0]
    both = load_checkpoint(out / "seed0" / "sources" / f"{DAY}+{SECOND}" / run_folder(FAMIX) / "latest.pt")
    assert (
        both["config"]["data"]["train"]
        == source_specs(BOTH, 0)
        == [*source_specs(DAY, 0), *source_specs(SECOND, 0)]
    )
    assert both["run"]["settings"]["data"]["train"] == source_specs(BOTH, 0)
    bank = StyleBank.load(out / "seed0" / "sources" / f"{DAY}+{SECOND}" / "bank_mined.safetensors")
    assert bank.metadata["run"]["settings"]["data"]["train"] == source_specs(BOTH, 0)
    text = (out / "sources_results.md").read_text()
    row = next(
        line
        for line in text.splitlines()
        if line.startswith(f"| FAMix on {BOTH} - FAMix on {DAY} (paired) |")
    )
    night = result["runs"][f"FAMix on {BOTH}"][0]["night"]["miou"] - first["runs"][FAMIX][0]["night"]["miou"]
    assert [c.strip() for c in row.strip("|").split("|")][2] == f"{night:+.1f}"


def test_conditions_spearman_and_its_frozen_rows_equal_the_rank_formula():
    """famix.demo.conditions: Spearman over the variants equals 1 - 6 sum d^2 / (n (n^2 - 1)) on lists
    without ties; the frozen rows use the frozen-backbone variants only, the control rows plain day mIoU."""
    import random

    from famix.demo.conditions import correlations, spearman

    rng = random.Random(3)

    def formula(a, b):
        ra = {v: k for k, v in enumerate(sorted(a))}
        rb = {v: k for k, v in enumerate(sorted(b))}
        n = len(a)
        return 1 - 6 * sum((ra[x] - rb[y]) ** 2 for x, y in zip(a, b, strict=True)) / (n * (n * n - 1))

    for n in (3, 5, 8):
        a, b = [rng.random() for _ in range(n)], [rng.random() for _ in range(n)]
        assert spearman(a, b) == pytest.approx(formula(a, b), abs=1e-12)
    rows = {
        v: {
            "real": {d: rng.random() for d in DOMAINS},
            "day_plain": rng.random(),
            "restyled": {d: rng.random() for d in DOMAINS[1:]},
        }
        for v in ABLATION
    }
    got = correlations(rows)
    frozen = [v for v in ABLATION if v.startswith("F/")]
    for d in DOMAINS[1:]:
        real = [rows[v]["real"][d] for v in frozen]
        assert got[d]["frozen restyled"] == pytest.approx(
            formula([rows[v]["restyled"][d] for v in frozen], real), abs=1e-12
        )
        everyone = [rows[v]["real"][d] for v in ABLATION]
        assert got[d]["day"] == pytest.approx(
            formula([rows[v]["day_plain"] for v in ABLATION], everyone), abs=1e-12
        )
