"""The demo: report arithmetic (against plain loops), the bank table, and a quick end-to-end run that is
reused, not redone, when run again."""

import os
import statistics

import pytest

from famix.demo import run as demo
from famix.demo.report import GROUPS, bank_table, report
from famix.demo.run import ABLATION, BASELINE, DEFAULT_VARIANTS, FAMIX, run_demo, run_folder

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
    values = {v: [{d: 100 * rng.random() for d in DOMAINS} for _ in range(3)] for v in (BASELINE, "F/-/M", FAMIX)}
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


def test_quick_demo_writes_its_outputs_and_reuses_finished_runs(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    first = run_demo(out, quick=True)
    for name in ("results.md", "results.json", "results.png", "predictions.png", "seed0/config.yaml"):
        assert (out / name).is_file(), name
    text = (out / "results.md").read_text()
    assert all(f"| {v} |" in text for v in DEFAULT_VARIANTS)
    assert "Style bank: mined styles per dominant class" in text
    checkpoint = out / "seed0" / "F_A_M__FAMix" / "latest.pt"
    stamp = checkpoint.stat().st_mtime_ns

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a cached evaluation was recomputed")

    monkeypatch.setattr(demo, "evaluate_specs", no_evaluation)
    monkeypatch.setattr(demo, "train", no_evaluation)
    second = run_demo(out, quick=True)  # finished runs are reused: nothing retrained nor re-evaluated
    assert checkpoint.stat().st_mtime_ns == stamp
    assert second["runs"] == first["runs"]

    quick_config = demo.demo_config

    def other_training(out, quick, seed):  # same mining settings (banks resume), another learning rate
        cfg = quick_config(out, quick, seed)
        cfg.train.lr *= 2
        return cfg

    monkeypatch.setattr(demo, "demo_config", other_training)
    with pytest.raises(FileExistsError, match="holds a run made with other settings"):
        run_demo(out, quick=True)  # a run folder is never overwritten by, or mixed with, other settings
    assert checkpoint.stat().st_mtime_ns == stamp
