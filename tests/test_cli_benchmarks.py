"""The real CLI on fake benchmark datasets: `famix eval` numbers equal an independent computation,
`famix predict` on a video keeps frame count and rate."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from famix.cli import main
from famix.config import ModelConfig
from famix.data.transforms import normalize
from famix.engine.checkpoint import save_checkpoint
from famix.models.build import build_segmenter
from tests import fake_datasets

os.environ["HF_HUB_OFFLINE"] = "1"

# Cityscapes labelId -> trainId, written out independently of famix's tables (ids not listed -> 255)
ID_TO_TRAIN = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = ModelConfig(backbone="tiny-rn")
    model = build_segmenter(cfg, seed=3).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(
        path,
        model_state=model.state_dict(),
        config={"model": vars(cfg), "run": {"amp": "off"}},
        cur_itrs=0,
        best_score=0,
    )
    return path, model


def independent_miou(model, pairs):
    cm = np.zeros((19, 19), dtype=np.int64)
    for image_path, label_path in pairs:
        image = torch.from_numpy(np.array(Image.open(image_path).convert("RGB"))).permute(2, 0, 1)
        with torch.no_grad():
            pred = model(normalize(image)[None]).argmax(1)[0].numpy()
        raw = np.array(Image.open(label_path))
        label = np.vectorize(lambda v: ID_TO_TRAIN.get(int(v), 255))(raw)
        for t, p in zip(label.ravel(), pred.ravel(), strict=True):
            if t != 255:
                cm[t, p] += 1
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    return 100 * float(np.mean(tp[union > 0] / union[union > 0]))  # percent, as famix reports


def test_eval_two_fake_datasets_matches_independent_confusion(checkpoint, tmp_path, capsys):
    path, model = checkpoint
    fake_datasets.cityscapes(tmp_path / "cs", {"val": {"lindau": 2, "munster": 1}})
    fake_datasets.acdc(tmp_path / "acdc", "night", "val", 2)
    out = tmp_path / "eval.json"
    main(
        [
            "eval",
            str(path),
            "--data",
            f"cityscapes:{tmp_path / 'cs'}:val",
            f"acdc:night:{tmp_path / 'acdc'}:val",
            "--paper-table",
            "--json",
            str(out),
            "--workers",
            "0",
        ]
    )
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())["datasets"]
    cs = sorted((tmp_path / "cs" / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    cs_pairs = [
        (p, str(p).replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png", "_gtFine_labelIds.png"))
        for p in cs
    ]
    night = sorted((tmp_path / "acdc" / "rgb_anon" / "night" / "val").rglob("*_rgb_anon.png"))
    night_pairs = [
        (p, str(p).replace("rgb_anon", "gt", 1).replace("_rgb_anon.png", "_gt_labelIds.png")) for p in night
    ]
    expected = {
        "cityscapes": independent_miou(model, cs_pairs),
        "acdc:night": independent_miou(model, night_pairs),
    }
    for spec, value in results.items():
        key = "cityscapes" if spec.startswith("cityscapes") else "acdc:night"
        assert value["miou"] == pytest.approx(expected[key], abs=1e-9)
        assert value["num_images"] == (3 if key == "cityscapes" else 2)
        assert f"{expected[key]:.2f}" in printed
    assert "ACDC night" in printed and f"{sum(expected.values()) / 2:.2f}" in printed


def test_predict_video_cli_keeps_frames_and_rate(checkpoint, tmp_path):
    av = pytest.importorskip("av")
    path, _ = checkpoint
    src = tmp_path / "drive.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(src), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(9):
            frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    main(["predict", str(path), str(src), "--out", str(tmp_path / "pred"), "--batch-size", "4"])
    (video,) = (tmp_path / "pred").glob("*.mp4")
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert sum(1 for _ in container.decode(stream)) == 9
        assert stream.average_rate == 12
