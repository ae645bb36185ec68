"""The real entry points end to end on a tiny CLIP ViT (random weights): mine, train, eval, predict, export
and adapt, through the CLI, with the tiny_vit preset."""

import json
from pathlib import Path

import torch
from PIL import Image

from famix.cli import main
from famix.engine.checkpoint import load_checkpoint, load_segmenter
from famix.engine.exported import load_exported
from famix.style.bank import StyleBank

TINY_VIT = str(Path(__file__).resolve().parents[1] / "src" / "famix" / "configs" / "tiny_vit.yaml")


def test_cli_on_a_tiny_vit(tmp_path):
    bank, run = tmp_path / "bank.safetensors", tmp_path / "run"
    main(["mine", "-c", TINY_VIT, f"style.bank={bank}", "mine.max_images=8", "mine.steps=2"])
    styles = StyleBank.load(bank)
    assert styles.channels == 32 and len(styles) > 0  # tiny-vit's width: styles of patch embeddings
    main(["train", "-c", TINY_VIT, f"train.out={run}", f"style.bank={bank}", "train.iterations=4"])
    ckpt = load_checkpoint(run / "latest.pt")
    start = load_segmenter(run / "latest.pt")[0]
    assert (
        ckpt["cur_itrs"] == 4 and start.family.name == "vit" and ckpt["config"]["model"]["output_stride"] == 8
    )
    spec = "synthetic:fog:2:5:size=64"
    main(
        ["eval", str(run / "latest.pt"), "--data", spec, "--workers", "0", "--json", str(tmp_path / "e.json")]
    )
    assert 0 <= json.loads((tmp_path / "e.json").read_text())["datasets"][spec]["miou"] <= 100
    Image.new("RGB", (44, 30), (120, 30, 200)).save(tmp_path / "x.png")
    main(["predict", str(run / "latest.pt"), str(tmp_path / "x.png"), "--out", str(tmp_path / "pred")])
    assert Image.open(tmp_path / "pred" / "x_trainid.png").size == (44, 30)
    onnx = tmp_path / "m.onnx"
    main(["export", str(run / "latest.pt"), "--format", "onnx", "--size", "32x48", "--out", str(onnx)])
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(torch.as_tensor(load_exported(onnx, "onnx")(x)), start(x), atol=1e-4)
    main(
        [
            "adapt",
            str(run / "latest.pt"),
            "--target",
            "fog",
            "--data",
            "synthetic:day:4:0:size=48",
            "--out",
            str(tmp_path / "adapt"),
            "--iterations",
            "2",
            "--steps",
            "2",
            "--crop",
            "32",
            "--batch-size",
            "2",
            "--device",
            "cpu",
        ]
    )
    adapted = load_checkpoint(tmp_path / "adapt" / "fog" / "latest.pt")["model_state"]
    before = ckpt["model_state"]
    assert all(torch.equal(adapted[k], v) for k, v in before.items() if k.startswith("backbone."))
    assert any(not torch.equal(adapted[k], v) for k, v in before.items() if k.startswith("neck."))
