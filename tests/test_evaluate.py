"""Tests for famix.engine.evaluate: confusion/IoU against loop oracles, multi-scale inference, evaluate()."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from famix.engine.evaluate import (
    EvalResult,
    confusion_matrix,
    evaluate,
    format_table,
    iou_from_confusion,
    predict_logits,
)


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
        np.testing.assert_array_equal(predict_logits(model, x, scale=1.0).numpy(), full.numpy())

        small = F.interpolate(x, size=(round(17 * 0.5), round(22 * 0.5)), mode="bilinear", align_corners=True)
        half = F.interpolate(model(small), size=(17, 22), mode="bilinear", align_corners=True)
        out = predict_logits(model, x, scale=0.5)
        assert out.shape == (2, 4, 17, 22)
        torch.testing.assert_close(out, half)
        torch.testing.assert_close(predict_logits(model, x, scale=0.5, ensemble=True), (full + half) / 2)

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
    assert res.miou == pytest.approx(np.nanmean(_iou_oracle(cm.astype(np.float64))))
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
    a = EvalResult(0.5, [0.25, None, 0.75], [[0]], 3)
    b = EvalResult(0.4123, [0.1, 0.2, None], [[0]], 2)
    table = format_table({"gta": a, "bdd": b}, class_names=["x", "y", "z"])
    lines = table.splitlines()
    assert lines[0].split("|")[2:5] == [" gta ", " bdd ", " mean "]
    assert "| mIoU | 50.00 | 41.23 | 45.62 |" in table
    assert "class" not in table
    full = format_table({"gta": a, "bdd": b}, class_names=["x", "y", "z"], per_class=True)
    assert "| y | - | 20.00 |" in full and "| z | 75.00 | - |" in full
