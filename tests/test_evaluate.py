"""famix.engine.evaluate / inference / results: IoU and sliding windows vs loop oracles, eval, tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from famix.engine.evaluate import EvalResult, confusion_matrix, evaluate, evaluate_specs, iou_from_confusion
from famix.engine.inference import predict_logits, sliding_logits, window_starts
from famix.engine.results import format_paper_table, format_table, paper_column, write_results
from famix.settings import InferenceSettings


def _cm_oracle(pred, label, k):
    cm = np.zeros((k, k), dtype=np.int64)
    for p, t in zip(pred.reshape(-1).tolist(), label.reshape(-1).tolist(), strict=True):
        if 0 <= t < k:
            cm[t, p] += 1
    return cm


@pytest.mark.parametrize("shape,k", [((7,), 2), ((3, 5, 4), 19), ((2, 1, 9, 6), 5), ((0,), 3)])
def test_confusion_matrix_matches_loop(shape, k):
    g = torch.Generator().manual_seed(k)
    pred = torch.randint(0, k, shape, generator=g)
    # labels in [0, k + 3) with some 255: out-of-range and ignore pixels must be skipped
    label = torch.randint(0, k + 3, shape, generator=g)
    label[torch.rand(shape, generator=g) < 0.2] = 255
    cm = confusion_matrix(pred, label, k)
    assert cm.dtype == torch.int64 and cm.shape == (k, k)
    np.testing.assert_array_equal(cm.numpy(), _cm_oracle(pred, label, k))


def test_confusion_matrix_uint8_labels():
    pred = torch.tensor([[0, 1], [1, 1]])
    label = torch.tensor([[0, 255], [1, 0]], dtype=torch.uint8)
    assert confusion_matrix(pred, label, 2).tolist() == [[1, 1], [0, 1]]


def _iou_oracle(cm):
    ious = []
    for c in range(cm.shape[0]):
        tp = cm[c, c]
        union = cm[c, :].sum() + cm[:, c].sum() - tp
        ious.append(tp / union if union > 0 else math.nan)
    return ious


def test_iou_matches_loop_oracle():
    cm = torch.randint(0, 50, (6, 6), generator=torch.Generator().manual_seed(0))
    miou, per_class = iou_from_confusion(cm)
    expected = _iou_oracle(cm.double().numpy())
    np.testing.assert_allclose(per_class.numpy(), expected)
    assert miou == pytest.approx(np.mean(expected))


def test_iou_absent_and_predicted_but_absent():
    # class 0: perfect; class 1: never present nor predicted (nan, excluded);
    # class 2: predicted (from class 0 pixels) but never present -> IoU 0, included in the mean
    cm = torch.tensor([[8, 0, 2], [0, 0, 0], [0, 0, 0]])
    miou, per_class = iou_from_confusion(cm)
    assert per_class[0].item() == pytest.approx(0.8)
    assert math.isnan(per_class[1].item())
    assert per_class[2].item() == 0.0
    assert miou == pytest.approx(0.4)
    assert math.isnan(iou_from_confusion(torch.zeros(3, 3, dtype=torch.int64))[0])


def _conv_model(k=4, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Conv2d(3, k, 3, padding=1)


def test_predict_logits_scales():
    model = _conv_model()
    x = torch.randn(2, 3, 17, 22)
    with torch.no_grad():
        full = model(x)
        np.testing.assert_array_equal(predict_logits(model, x).numpy(), full.numpy())
        np.testing.assert_array_equal(
            predict_logits(model, x, InferenceSettings(scale=1.0)).numpy(), full.numpy()
        )

        small = F.interpolate(x, size=(round(17 * 0.5), round(22 * 0.5)), mode="bilinear", align_corners=True)
        half = F.interpolate(model(small), size=(17, 22), mode="bilinear", align_corners=True)
        out = predict_logits(model, x, InferenceSettings(scale=0.5))
        assert out.shape == (2, 4, 17, 22)
        torch.testing.assert_close(out, half)
        torch.testing.assert_close(
            predict_logits(model, x, InferenceSettings(0.5, ensemble=True)), (full + half) / 2
        )

        # out_size: scale-1 logits are resized to the label size
        resized = F.interpolate(full, size=(9, 30), mode="bilinear", align_corners=True)
        torch.testing.assert_close(predict_logits(model, x, out_size=(9, 30)), resized)


def _make_loader(k=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    batches = []  # a list of (images, labels) batches is all evaluate() needs from a loader
    for b, (h, w) in [(2, (12, 16)), (1, (12, 16)), (3, (10, 8))]:
        images = torch.randn(b, 3, h, w, generator=g)
        labels = torch.randint(0, k, (b, h, w), generator=g)
        labels[torch.rand(b, h, w, generator=g) < 0.1] = 255
        batches.append((images, labels))
    return batches


def test_evaluate_matches_numpy():
    k = 4
    model = _conv_model(k)
    loader = _make_loader(k)
    cm = np.zeros((k, k), dtype=np.int64)
    with torch.no_grad():
        for images, labels in loader:
            pred = model(images).argmax(1).numpy().reshape(-1)
            lab = labels.numpy().reshape(-1)
            ok = lab < k
            np.add.at(cm, (lab[ok], pred[ok]), 1)
    res = evaluate(model, loader, num_classes=k, progress=False)
    assert res.num_images == 6
    assert res.confusion == cm.tolist()
    assert res.miou == pytest.approx(100 * np.nanmean(_iou_oracle(cm.astype(np.float64))))  # percent
    d = res.to_dict()
    assert d["confusion"] == cm.tolist() and d["num_images"] == 6


def test_evaluate_restores_modes():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 3, 1))
    model.train()
    model[1].eval()  # e.g. a frozen BN kept in eval during training
    seen = []
    model.register_forward_pre_hook(lambda m, a: seen.append([x.training for x in m.modules()]))
    evaluate(model, _make_loader(3), num_classes=3, progress=False)
    assert seen and not any(any(s) for s in seen)  # everything in eval while evaluating
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_format_table():
    # percent; accuracies from the confusion: a [75, -, 100] (aAcc 4/5), b [50, 50, -] (aAcc 3/6)
    a = EvalResult(50.0, [25.0, None, 75.0], [[3, 1, 0], [0, 0, 0], [0, 0, 1]], 3)
    b = EvalResult(41.0, [10.0, 20.0, None], [[1, 0, 1], [0, 2, 2], [0, 0, 0]], 2)
    table = format_table({"gta": a, "bdd": b}, class_names=["x", "y", "z"])
    lines = table.splitlines()
    assert lines[0].split("|")[2:5] == [" gta ", " bdd ", " mean "]
    assert lines[2:] == ["| mIoU | 50.00 | 41.00 | 45.50 |", "| aAcc | 80.00 | 50.00 | 65.00 |",
                         "| mAcc | 87.50 | 50.00 | 68.75 |"]  # fmt: skip
    assert "class" not in table
    full = format_table({"gta": a, "bdd": b}, class_names=["x", "y", "z"], per_class=True)
    assert "| class | gta IoU | gta Acc | bdd IoU | bdd Acc |" in full
    assert "| y | - | - | 20.00 | 50.00 |" in full and "| z | 75.00 | 100.00 | - | - |" in full


@pytest.mark.parametrize(
    "length,window,stride,expected",
    [
        (10, 4, 3, [0, 3, 6]),
        (10, 4, 2, [0, 2, 4, 6]),
        (9, 4, 4, [0, 4, 5]),
        (8, 4, 4, [0, 4]),
        (3, 4, 2, [0]),
    ],
)
def test_window_starts(length, window, stride, expected):
    assert window_starts(length, window, stride) == expected


def _sliding_oracle(model, x, window, stride):
    # Independent enumeration: every stride-th start that fits, plus one flush with the far border.
    h, w = x.shape[-2:]
    wh, ww = min(window, h), min(window, w)
    ys = sorted(set(range(0, h - wh + 1, stride)) | {h - wh})
    xs = sorted(set(range(0, w - ww + 1, stride)) | {w - ww})
    total, count = None, np.zeros((h, w))
    for y in ys:
        for x0 in xs:
            tile = model(x[:, :, y : y + wh, x0 : x0 + ww]).numpy().astype(np.float64)
            if total is None:
                total = np.zeros((x.shape[0], tile.shape[1], h, w))
            for i in range(wh):  # pixel by pixel: the slow, obviously right version
                for j in range(ww):
                    total[:, :, y + i, x0 + j] += tile[:, :, i, j]
                    count[y + i, x0 + j] += 1
    return total / count


@pytest.mark.parametrize(
    "shape,window,stride",
    [((2, 3, 13, 17), 6, None), ((1, 3, 9, 20), 8, 3), ((1, 3, 5, 7), 10, 2), ((1, 3, 8, 8), 4, 4)],
)
def test_sliding_matches_oracles(shape, window, stride):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    pointwise = torch.nn.Conv2d(
        3, 5, 1
    )  # output at a pixel depends on that pixel only: tiling changes nothing
    conv = _conv_model(k=5)  # 3x3, zero padding: tile borders differ from the full image
    with torch.no_grad():
        torch.testing.assert_close(sliding_logits(pointwise, x, window, stride), pointwise(x))
        out = sliding_logits(conv, x, window, stride)
        assert out.shape == (shape[0], 5, *shape[2:]) and out.dtype == torch.float32
        np.testing.assert_allclose(
            out.numpy(), _sliding_oracle(conv, x, window, stride or window * 2 // 3), atol=1e-5
        )
        if window < max(shape[2:]):  # the test has teeth: tiling a 3x3 conv is not the full conv
            assert not torch.allclose(out, conv(x), atol=1e-4)


def test_sliding_low_resolution_model_and_errors():
    model = torch.nn.Sequential(torch.nn.AvgPool2d(2), torch.nn.Conv2d(3, 4, 1))  # logits at half size
    x = torch.randn(1, 3, 12, 14)
    with torch.no_grad():
        assert sliding_logits(model, x, 8).shape == (1, 4, 12, 14)
    with pytest.raises(ValueError, match="stride"):
        sliding_logits(model, x, 4, stride=5)  # gaps between windows
    with pytest.raises(ValueError, match="window"):
        sliding_logits(model, x, 0)


def test_predict_logits_window_with_scale_and_ensemble():
    pointwise = torch.nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 19, 26)
    with torch.no_grad():
        for scale, ensemble in [(None, False), (0.5, False), (0.5, True), (1.5, True)]:
            full = predict_logits(pointwise, x, InferenceSettings(scale, ensemble), out_size=(10, 30))
            tiled = predict_logits(pointwise, x, InferenceSettings(scale, ensemble, 7, 5), out_size=(10, 30))
            torch.testing.assert_close(tiled, full)
    res_full = evaluate(pointwise, _make_loader(), num_classes=4, progress=False)
    res_tiled = evaluate(
        pointwise, _make_loader(), num_classes=4, tta=InferenceSettings(window=5), progress=False
    )
    assert res_tiled.confusion == res_full.confusion


def test_evaluate_specs_equals_evaluate_per_dataset():
    from famix.data.datasets import build_dataset
    from famix.data.transforms import normalize

    conv = _conv_model(k=19)
    specs = ["synthetic:fog:3:5:size=24", "synthetic:night:2:6:size=16"]
    many = evaluate_specs(conv, specs, 19, batch_size=2, progress=False)
    assert list(many) == specs
    for spec in specs:
        items = [(normalize(image)[None], label[None]) for image, label in build_dataset(spec)]
        one = evaluate(conv, items, 19)
        assert many[spec].confusion == one.confusion and many[spec].num_images == one.num_images


def test_test_time_settings_are_checked():
    for bad in (dict(scale=0), dict(window=0), dict(window=4, stride=5), dict(stride=3)):
        with pytest.raises(ValueError):
            InferenceSettings(**bad)
    assert (
        InferenceSettings().describe() == "" and InferenceSettings(0.5, True, 512).describe() == "s0.5e-w512"
    )


def test_paper_column():
    cases = {
        "cityscapes:/data/cs:val": "C",
        "BDD100K:/b": "B",
        "bdd:/b": "B",
        "mapillary:/m": "M",
        "synthia:/s": "S",
        "acdc:night:/a": "ACDC night",
        "acdc:fog:/a:val": "fog",
        "acdc:/a": None,
        "gta5:/g:val": None,
        "synthetic:fog:30": None,
    }
    assert {spec: paper_column(spec) for spec in cases} == cases


def _result(miou, k=3):
    return EvalResult(miou, [miou] * (k - 1) + [None], [[1] * k] * k, 2)


def test_format_paper_table():
    results = {
        "synthetic:fog:30": _result(10.0),
        "acdc:fog:/a": _result(40.0),
        "mapillary:/m": _result(30.0),
        "cityscapes:/c": _result(48.154),
        "acdc:night:/a": _result(math.nan),
        "cityscapes:/other": _result(20.0),  # a second Cityscapes: its own column
    }
    lines = format_paper_table(results, name="famix").splitlines()
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    assert header == ["", "C", "M", "ACDC night", "fog", "synthetic:fog:30", "cityscapes:/other", "mean"]
    assert lines[1] == "| --- | --- | --- | --- | --- | --- | --- | --- |"
    mean = (48.154 + 30 + 40 + 10 + 20) / 5  # nan (an empty split) is shown as "-", not averaged
    assert lines[2] == f"| famix | 48.15 | 30.00 | - | 40.00 | 10.00 | 20.00 | {mean:.2f} |"


def test_write_results(tmp_path):
    results = {"cityscapes:/c": _result(50.0, k=19), "acdc:snow:/a": _result(math.nan, k=19)}
    path = write_results(results, tmp_path / "sub" / "eval.json")
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # no temporary file left
    data = json.loads(path.read_text())
    cs = data["datasets"]["cityscapes:/c"]
    assert list(cs["per_class_iou"])[:2] == ["road", "sidewalk"] and cs["per_class_iou"]["bicycle"] is None
    assert cs["miou"] == 50.0 and cs["num_images"] == 2 and data["datasets"]["acdc:snow:/a"]["miou"] is None
    assert (
        data["unit"] == "percent"
        and data["mean_miou"] == 50.0
        and data["table"] == format_paper_table(results)
    )
    assert cs["confusion"] == results["cityscapes:/c"].confusion
    named = json.loads(write_results({"x": _result(50.0)}, tmp_path / "n.json", ["a", "b", "c"]).read_text())
    assert named["datasets"]["x"]["per_class_iou"] == {"a": 50.0, "b": 50.0, "c": None}


def test_batched_evaluation_equals_batch_one():
    """Batch 1 and batch N give the same confusion matrix (CPU), also for a dataset of mixed image sizes."""
    from famix.config import ModelConfig
    from famix.engine.evaluate import collate_by_size
    from famix.models.build import build_segmenter

    model = build_segmenter(ModelConfig(backbone="tiny-rn"), seed=1)
    specs = ["synthetic:fog:5:3:size=40"]
    one = evaluate_specs(model, specs, 19, batch_size=1, progress=False)[specs[0]]
    many = evaluate_specs(model, specs, 19, batch_size=4, progress=False)[specs[0]]
    assert many.confusion == one.confusion and many.num_images == one.num_images == 5
    g = torch.Generator().manual_seed(0)
    items = [
        (torch.randint(0, 256, (3, h, 24), dtype=torch.uint8, generator=g), torch.zeros(h, 24))
        for h in (16, 24, 16)
    ]
    batches = collate_by_size(items)
    assert [tuple(b[0].shape) for b in batches] == [(2, 3, 16, 24), (1, 3, 24, 24)]
    assert torch.equal(batches[0][0][1], items[2][0])
    mixed = evaluate(model, [batches], 19, progress=False)
    single = evaluate(model, [(i[None], t[None]) for i, t in items], 19, progress=False)
    assert mixed.confusion == single.confusion and mixed.num_images == 3


def test_torchrun_evaluation_equals_one_process(checkpoint, tmp_path):
    """`torchrun -m famix eval`: 2 processes (gloo), uneven shares (5 and 3 images over 2 ranks), the same
    confusion matrices and counts as one process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from famix.cli import main

    specs = ["synthetic:fog:5:3:size=32", "synthetic:night:3:4:size=40"]
    common = ["eval", str(checkpoint), "--data", *specs, "--workers", "0", "--batch-size", "2"]
    main([*common, "--json", str(tmp_path / "one.json")])
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "src")}
    proc = subprocess.run(
        [*cmd, "-m", "famix", *common, "--json", str(tmp_path / "two.json")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("results written to") == 1  # rank 0 alone reports
    one = json.loads((tmp_path / "one.json").read_text())["datasets"]
    two = json.loads((tmp_path / "two.json").read_text())["datasets"]
    for spec in specs:
        assert two[spec]["confusion"] == one[spec]["confusion"]
        assert two[spec]["num_images"] == one[spec]["num_images"] and two[spec]["miou"] == one[spec]["miou"]
