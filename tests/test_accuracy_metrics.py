"""mmsegmentation's pixel accuracies (aAcc, mAcc, per-class accuracy) vs a loop over the confusion matrix;
old result dicts read back with them; ``famix eval`` prints and writes them."""

from __future__ import annotations

import json
import math

import pytest
import torch

from famix.cli import main
from famix.engine.evaluate import EvalResult, accuracy_from_confusion, group_confusion, iou_from_confusion

SPEC = "synthetic:day:4:3:size=48"


def _loop_accuracies(cm: list[list[int]]) -> tuple[float, float, list[float | None]]:
    """The obvious definitions, one pixel count at a time, in percent (None: class absent from the labels)."""
    k = len(cm)
    correct = sum(cm[i][i] for i in range(k))
    labelled = sum(cm[i][j] for i in range(k) for j in range(k))
    per_class: list[float | None] = []
    for i in range(k):
        row = sum(cm[i][j] for j in range(k))
        per_class.append(100 * cm[i][i] / row if row > 0 else None)
    present = [a for a in per_class if a is not None]
    aacc = 100 * correct / labelled if labelled > 0 else math.nan
    macc = sum(present) / len(present) if present else math.nan
    return aacc, macc, per_class


def _random_confusion(k: int, seed: int) -> torch.Tensor:
    """A random int64 confusion [k, k] with some classes absent from the ground truth (zero rows) and some
    never predicted (zero columns)."""
    g = torch.Generator().manual_seed(seed)
    cm = torch.randint(0, 1000, (k, k), generator=g)
    cm[torch.randperm(k, generator=g)[: k // 4]] = 0  # absent from the ground truth
    cm[:, torch.randperm(k, generator=g)[: k // 5]] = 0  # never predicted
    return cm


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=0, abs_tol=1e-12)


def _assert_matches_loop(result: EvalResult, cm: list[list[int]]) -> None:
    aacc, macc, per_class = _loop_accuracies(cm)
    assert _close(result.aacc, aacc) and _close(result.macc, macc)
    assert len(result.per_class_acc) == len(per_class)
    assert all(_close(a, b) for a, b in zip(result.per_class_acc, per_class, strict=True))


@pytest.mark.parametrize("k,seed", [(19, 0), (7, 1), (5, 2), (1, 3)])
def test_accuracies_equal_a_loop(k, seed):
    cm = _random_confusion(k, seed)
    aacc, macc, per_class = accuracy_from_confusion(cm)
    assert per_class.dtype == torch.float64 and per_class.shape == (k,)
    loop_aacc, loop_macc, loop_per_class = _loop_accuracies(cm.tolist())
    assert _close(100 * aacc, loop_aacc) and _close(100 * macc, loop_macc)
    got = [None if math.isnan(v) else 100 * v for v in per_class.tolist()]
    assert all(_close(a, b) for a, b in zip(got, loop_per_class, strict=True))
    _assert_matches_loop(EvalResult.from_confusion(cm, num_images=3), cm.tolist())
    if k >= 4:
        assert None in loop_per_class  # the case of an absent class was exercised
        assert any(cm[:, j].sum() == 0 for j in range(k))  # and of a class never predicted


def test_nothing_labelled_is_nan_like_miou():
    for cm in (torch.zeros(4, 4, dtype=torch.int64), torch.zeros(0, 0, dtype=torch.int64)):
        aacc, macc, per_class = accuracy_from_confusion(cm)
        assert math.isnan(aacc) and math.isnan(macc) and bool(per_class.isnan().all())
        result = EvalResult.from_confusion(cm, num_images=0)
        assert math.isnan(result.miou) and math.isnan(result.aacc) and math.isnan(result.macc)
        assert result.per_class_acc == [None] * len(cm)
        d = result.to_dict()
        assert d["miou"] is None and d["aacc"] is None and d["macc"] is None
        json.dumps(d, allow_nan=False)  # strict JSON


def test_old_dicts_without_accuracies_read_back_with_them():
    cm = _random_confusion(19, 4)
    result = EvalResult.from_confusion(cm, num_images=5)
    new = result.to_dict()
    assert {"aacc", "macc", "per_class_acc"} <= set(new)
    old = {k: new[k] for k in ("miou", "per_class_iou", "confusion", "num_images")}  # earlier famix versions
    for d in (old, new, json.loads(json.dumps(new))):
        back = EvalResult.from_dict(d)
        assert back == result
        assert (back.aacc, back.macc, back.per_class_acc) == (result.aacc, result.macc, result.per_class_acc)
    _assert_matches_loop(EvalResult.from_dict(old), cm.tolist())


def test_grouped_confusion_has_its_own_accuracies():
    cm = _random_confusion(19, 5)
    groups = torch.arange(19) % 4  # 19 classes -> 4 groups
    grouped = group_confusion(cm, groups, 4)
    result = EvalResult.from_confusion(grouped, num_images=2)
    _assert_matches_loop(result, grouped.tolist())
    assert result.aacc >= EvalResult.from_confusion(cm, 2).aacc  # merging classes only adds correct pixels


def test_miou_is_unchanged():
    cm = _random_confusion(19, 6)
    assert EvalResult.from_confusion(cm, 1).miou == 100 * iou_from_confusion(cm)[0]


def _frequent_classes_only(checkpoint, path):
    """The fixture's random checkpoint restricted to road, building, vegetation and sky (its own choice
    among them per pixel), so that the synthetic scenes score above zero."""
    ckpt = torch.load(checkpoint, weights_only=False)
    weight = ckpt["model_state"]["classifier.classifier.3.weight"]  # [19, 256, 1, 1]
    bias = ckpt["model_state"]["classifier.classifier.3.bias"]  # [19]
    others = torch.ones(19, dtype=torch.bool)
    others[[0, 2, 8, 10]] = False
    weight[others], bias[others] = 0.0, -1e3
    torch.save(ckpt, path)


def test_famix_eval_prints_and_writes_accuracies(checkpoint, tmp_path, capsys):
    ckpt = tmp_path / "best.pt"
    _frequent_classes_only(checkpoint, ckpt)
    out = tmp_path / "r.json"
    main(["eval", str(ckpt), "--data", SPEC, "--workers", "0", "--json", str(out), "--per-class"])
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())["datasets"][SPEC]
    aacc, macc, per_class = _loop_accuracies(saved["confusion"])
    assert 0 < macc < aacc < 100  # a case where the two differ
    assert _close(saved["aacc"], aacc) and _close(saved["macc"], macc)
    assert list(saved["per_class_acc"]) == list(saved["per_class_iou"])  # keyed by class name
    assert all(_close(a, b) for a, b in zip(saved["per_class_acc"].values(), per_class, strict=True))
    lines = printed.splitlines()
    assert f"| aAcc | {aacc:.2f} | {aacc:.2f} |" in lines and f"| mAcc | {macc:.2f} | {macc:.2f} |" in lines
    assert f"| class | {SPEC} IoU | {SPEC} Acc |" in lines
    road = next(line for line in lines if line.startswith("| road |"))
    assert road.endswith(f" | {'-' if per_class[0] is None else f'{per_class[0]:.2f}'} |")


def test_reproduce_reports_accuracies_over_seeds():
    from famix.config import Config
    from famix.stages.reproduce import summarise

    cfg = Config()
    cfg.data.train = "gta5:data/gta5"
    results = {s: EvalResult.from_confusion(_random_confusion(19, 10 + s), 1) for s in (0, 1)}
    empty = EvalResult.from_confusion(torch.zeros(19, 19, dtype=torch.int64), 1)
    runs = {s: {"cityscapes:d:val": results[s], "bdd100k:d:val": empty} for s in (0, 1)}
    summary = summarise(runs, cfg)
    json.dumps(summary, allow_nan=False)  # results.json: strict JSON
    c, b = summary["columns"]["C"], summary["columns"]["B"]
    for key in ("aacc", "macc"):
        seeds = [getattr(results[s], key) for s in (0, 1)]
        assert c[key]["seeds"] == seeds and math.isclose(c[key]["mean"], sum(seeds) / 2)
        assert math.isclose(c[key]["std"], abs(seeds[0] - seeds[1]) / math.sqrt(2))
        assert b[key] == {"seeds": [None, None], "mean": None, "std": None}
    table = summary["table"].splitlines()
    assert table[2] == "| | C | B | mean |" and table[4].startswith("| famix (2 seeds) |")  # mIoU: as before
    aacc_row = next(line for line in table if line.startswith("| aAcc |"))
    assert aacc_row.endswith(f" | no labels | {c['aacc']['mean']:.2f} |")
    assert "| mAcc |" in summary["table"]
