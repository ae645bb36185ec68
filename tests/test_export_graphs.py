"""One graph from pixels to classes (``famix export --graph ids``), ONNX files evaluated by ``famix eval``,
and the named dynamic dimensions, on a tiny segmenter with the demo's pretrained tiny CLIP tower (its
predictions are not one class everywhere, so agreement says something)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from famix.cli import main
from famix.config import ModelConfig
from famix.engine.checkpoint import save_checkpoint
from famix.models.build import build_segmenter
from famix.models.clip import packaged_weights

from .test_export import _images

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

DATA = "synthetic:day:6:5:size=64"  # six rendered day scenes, 64 px


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory):
    """A tiny-clip segmenter (the shipped CLIP tower's weights, a random head), saved as famix train would
    (fp32): its classes vary over an image."""
    cfg = ModelConfig(backbone="tiny-clip", weights=packaged_weights("tiny-clip"), num_classes=19)
    path = tmp_path_factory.mktemp("graphs") / "best.pt"
    model = build_segmenter(cfg, seed=1)
    save_checkpoint(
        path,
        model_state=model.state_dict(),
        config={"model": vars(cfg), "run": {"amp": "off"}, "data": {"train": "synthetic:day:12:3:size=64"}},
        cur_itrs=0,
        best_score=0,
    )
    return path


@pytest.fixture(scope="module")
def ids_file(trained_like):
    main(["export", str(trained_like), "--format", "onnx", "--graph", "ids", "--size", "32x48", "--dynamic"])
    return trained_like.with_name("best.ids.onnx")


def test_the_ids_graph_runs_in_bare_onnxruntime_and_equals_famix_predict(ids_file, trained_like, tmp_path):
    session = ort.InferenceSession(str(ids_file), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("images", "tensor(uint8)", ["batch", "height", "width", 3])
    assert (out.name, out.type, out.shape) == ("ids", "tensor(uint8)", ["batch", "height", "width"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["graph"] == "ids" and "uint8 [batch, height, width, 3]" in meta["input"]
    (tmp_path / "in").mkdir()
    paths = _images(tmp_path / "in", [(32, 48), (64, 64), (48, 80)])
    main(
        [
            "predict",
            str(trained_like),
            *map(str, paths),
            "--out",
            str(tmp_path / "pred"),
            "--outputs",
            "trainid",
        ]
    )
    kinds = set()
    for p in paths:
        pixels = np.asarray(Image.open(p).convert("RGB"))[None]  # [1, H, W, 3] uint8: no famix code
        ids = session.run(None, {"images": pixels})[0][0]  # [H, W] uint8
        expected = np.asarray(Image.open(tmp_path / "pred" / f"{p.stem}_trainid.png"))
        np.testing.assert_array_equal(ids, expected)
        kinds |= set(np.unique(ids).tolist())
    assert len(kinds) >= 3  # the model predicts several classes: the equality is not of constant maps
    # a batch of two runs as two single images do
    pair = np.stack([np.asarray(Image.open(paths[0]).convert("RGB"))] * 2)
    assert (session.run(None, {"images": pair})[0] == ids_of(session, pair[:1])).all()


def ids_of(session, pixels):
    return session.run(None, {"images": pixels})[0]


def _eval_json(path, model, extra=()):
    main(["eval", str(model), "--data", DATA, "--json", str(path), "--workers", "0", *extra])
    return json.loads(path.read_text())["datasets"][DATA]


def test_famix_eval_of_onnx_files_equals_the_checkpoints(trained_like, ids_file, tmp_path, capsys):
    main(["export", str(trained_like), "--format", "onnx", "--size", "64x64", "--dynamic"])
    logits_file = trained_like.with_name("best.onnx")
    ckpt = _eval_json(tmp_path / "ckpt.json", trained_like)
    for exported in (logits_file, ids_file):
        onnx = _eval_json(tmp_path / f"{exported.stem}.json", exported)
        assert onnx["miou"] == ckpt["miou"] and onnx["per_class_iou"] == ckpt["per_class_iou"]
    assert 0 < ckpt["miou"] < 100
    # ONNX results are cached beside the file under its own name, never in the checkpoint's cache
    assert (logits_file.parent / "best-onnx.eval-cache.json").is_file()
    assert (ids_file.parent / "best.ids-onnx.eval-cache.json").is_file()
    capsys.readouterr()  # the evaluations' progress bars
    with pytest.raises(SystemExit) as exit_:
        main(["eval", str(logits_file), "--data", DATA, "--amp", "bf16", "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert "is an ONNX file, computed in its own precision" in err


def test_int8_and_calibration_options_are_checked_before_work(trained_like, tmp_path, capsys):
    cases = [
        (["--format", "torchscript", "--int8"], "--int8 is for --format onnx"),
        (["--format", "onnx", "--calibrate", "styles"], "add --int8"),
        (
            ["--format", "onnx", "--int8", "--calibration-images", "0"],
            "--calibration-images 0: give a number",
        ),
        (
            ["--format", "onnx", "--int8", "--calibration-data", "synthetic:day:3:1:size=64"],
            "--calibration-data synthetic:day:3:1:size=64: 3 images, --int8 needs 36",
        ),
        (
            ["--format", "onnx", "--int8", "--calibrate", "styles", "--calibration-images", "2"],
            "--calibrate styles: the checkpoint names no style bank: pass --bank PATH",
        ),
    ]
    for options, message in cases:
        out = tmp_path / "m.onnx"
        with pytest.raises(SystemExit) as exit_:
            main(["export", str(trained_like), "--size", "64x64", "--out", str(out), *options])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
        assert not out.exists()


def _bank(path, model_checkpoint):
    """A style bank for the checkpoint's classes: random (mu, sigma) per class at its style map's width, as
    `famix mine` stores them (the int8 calibration restyles with them as training does)."""
    from famix.engine.checkpoint import load_segmenter
    from famix.style.bank import StyleBank

    model, cfg = load_segmenter(model_checkpoint)
    g = torch.Generator().manual_seed(0)
    bank = StyleBank(cfg.labels.names, model.style_channels)
    n = 4 * len(cfg.labels)
    mu = torch.randn(n, model.style_channels, generator=g)
    sigma = torch.rand(n, model.style_channels, generator=g) + 0.5
    bank.add(mu, sigma, torch.arange(n) % len(cfg.labels), 255)
    bank.save(path)
    return path


def test_int8_exports_run_in_bare_onnxruntime_and_famix_eval_reports_their_miou(
    trained_like, tmp_path, capsys
):
    bank = _bank(tmp_path / "bank.safetensors", trained_like)
    files = {}
    for calibrate in ("source", "styles"):
        out = tmp_path / f"{calibrate}.int8.onnx"
        extra = ["--bank", str(bank)] if calibrate == "styles" else []
        options = ["--int8", "--calibrate", calibrate, "--calibration-images", "8", "--size", "64x64"]
        main(
            [
                "export",
                str(trained_like),
                "--format",
                "onnx",
                *options,
                "--dynamic",
                "--out",
                str(out),
                *extra,
            ]
        )
        printed = capsys.readouterr().out
        assert "calibrating int8 on 8 images of synthetic:day:12:3:size=64" in printed
        assert ("restyled by the style bank" in printed) == (calibrate == "styles")
        agreement = float(printed.split("argmax agreement ")[1].split(" %")[0])
        assert agreement >= 90.0 and "held-back source images: 1x3x64x64" in printed
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        ops = {node.op_type for node in onnx.load(str(out)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert [o.name for o in session.get_outputs()] == ["logits"]  # no style map output
        quantization = json.loads(session.get_modelmeta().custom_metadata_map["quantization"])
        assert quantization["calibrated_on"] == calibrate and quantization["calibration_batches"] == 8
        meta = session.get_modelmeta().custom_metadata_map  # a file to share: no folder of this machine
        assert not [k for k, v in meta.items() if str(tmp_path) in v or str(trained_like.parent) in v]
        files[calibrate] = out
    assert files["source"].read_bytes() != files["styles"].read_bytes()  # restyled maps: other ranges
    fp32 = _eval_json(tmp_path / "ckpt.json", trained_like)
    int8 = _eval_json(tmp_path / "int8.json", files["source"])
    assert 0 < int8["miou"] < 100 and abs(int8["miou"] - fp32["miou"]) < 10  # int8 costs little here


def test_a_calibration_set_without_images_is_one_line(trained_like, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "labels").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(trained_like), "--format", "onnx", "--int8", "--size", "64x64",
              "--calibration-data", f"folder:{empty}", "--out", str(tmp_path / "m.onnx")])  # fmt: skip
    first = capsys.readouterr().err.strip().splitlines()[0]  # then the folder layout it expects
    assert exit_.value.code == 2
    assert first.startswith(f"famix export: error: --calibration-data folder:{empty}: folder: no image/label")
    assert not (tmp_path / "m.onnx").exists()
