"""Evaluation as the field reports it: --flip and --scales against plain per-image loops, the mmseg protocol's
sizes, Cityscapes labelIds scored by an independent Cityscapes metric, test-server layouts, one precision per
checkpoint, and bad test-time options named in one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import famix
from famix.cli import main
from famix.data.datasets import build_dataset
from famix.data.transforms import normalize
from famix.engine.checkpoint import load_segmenter
from famix.settings import EvalSettings, InferenceSettings
from famix.stages import evaluate
from tests import fake_datasets as fake
from tests.cli_errors import one_line

SPEC = "synthetic:night:3:5:size=40"


def loop_confusion(model, spec: str, scales: list[float], flip: bool) -> np.ndarray:
    """The confusion matrix of ``spec`` computed image by image: for each scale, the input resized (bilinear,
    align_corners=True, to round(size * s)), its logits and (flip) those of the flipped input flipped back,
    resized to the label's size; summed in float32, divided by their count, argmax."""
    dataset = build_dataset(spec)
    cm = np.zeros((19, 19), np.int64)
    with torch.inference_mode():
        for i in range(len(dataset)):
            image, label = dataset[i]
            x = normalize(image[None])  # [1, 3, H, W]
            h, w = x.shape[-2:]
            terms = []
            for s in scales:
                size = (max(1, round(h * s)), max(1, round(w * s)))
                xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=True)
                for flipped in [False, True] if flip else [False]:
                    logits = model(xs.flip(-1)).flip(-1) if flipped else model(xs)
                    if tuple(logits.shape[-2:]) != (h, w):
                        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True)
                    terms.append(logits.float())
            total = terms[0]
            for t in terms[1:]:
                total = total + t
            pred = (total / len(terms) if len(terms) > 1 else total).argmax(1)[0].numpy()
            lab = label.numpy().astype(np.int64)
            keep = lab < 19
            cm += np.bincount(lab[keep] * 19 + pred[keep], minlength=19 * 19).reshape(19, 19)
    return cm


@pytest.mark.parametrize(
    "flags,scales,flip",
    [(["--flip"], [1.0], True), (["--scales", "0.75", "1", "1.5"], [0.75, 1.0, 1.5], False),
     (["--flip", "--scales", "0.5", "1.25"], [0.5, 1.25], True)],
)  # fmt: skip
def test_flip_and_scales_equal_a_per_image_loop(checkpoint, tmp_path, flags, scales, flip):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(checkpoint.read_bytes())
    out = tmp_path / "r.json"
    main(
        ["eval", str(ckpt), "--data", SPEC, "--batch-size", "1", "--workers", "0", "--json", str(out), *flags]
    )
    result = json.loads(out.read_text())
    got = np.array(result["datasets"][SPEC]["confusion"])
    model, _ = load_segmenter(ckpt)
    want = loop_confusion(model.eval(), SPEC, scales, flip)
    assert got.sum() == want.sum() > 0 and np.array_equal(got, want)
    assert result["test_time"]["flip"] == flip and result["amp"] == "off"
    plain = loop_confusion(model, SPEC, [1.0], False)
    assert not np.array_equal(plain, want)  # the options changed something the loop reproduces


def test_mmseg_protocol_sizes(checkpoint, tmp_path, capsys):
    fake.cityscapes(tmp_path / "cs", {"val": {"lindau": 2}})  # 16 x 24 images
    spec = f"cityscapes:{tmp_path / 'cs'}:val"
    model = famix.load(checkpoint, device="cpu")
    seen = []
    model.network.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    results = famix.evaluate(model, [spec], protocol="mmseg", batch_size=1, progress=False)
    # fit (1024, 512): factor min(1024 / 24, 512 / 16) = 32 -> 512 x 768; windows 512, stride 341: x at 0, 256
    assert seen == [(1, 3, 512, 512)] * 4 and results[spec].num_images == 2
    _, tta = evaluate.resolve_protocol("mmseg", spec, InferenceSettings())
    assert tta.fit == (1024, 512) and (tta.window, tta.stride) == (512, 341)
    assert tta.input_size(1024, 2048, 1.0) == (512, 1024)  # a real Cityscapes frame: 1024 x 512 (W x H)
    assert evaluate.resolve_protocol("mmseg", "bdd100k:r:val", InferenceSettings())[1].fit == (1280, 720)
    assert evaluate.resolve_protocol("mmseg", "acdc:night:r:val", InferenceSettings())[1].fit == (960, 540)
    built, _ = evaluate.resolve_protocol("mmseg", "mapillary:r:validation", InferenceSettings())
    assert built == "mapillary:r:validation:size=none"
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(checkpoint.read_bytes())
    main(["eval", str(ckpt), "--data", spec, "--protocol", "mmseg", "--workers", "0", "--batch-size", "1"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("protocol "))
    assert lines[first].startswith("protocol mmseg: mmseg: fit to the dataset's box, 512-pixel windows")
    assert lines[first + 1].startswith("|") and "precision: off" in lines[first]  # above the table
    saved = json.loads(next(tmp_path.glob("best.eval.*mmseg.json")).read_text())
    assert saved["protocol"] == "mmseg" and saved["protocol_settings"][spec]["fit"] == [1024, 512]
    assert math.isclose(saved["datasets"][spec]["miou"], results[spec].miou)


# Cityscapes' classes with ignoreInEval = False: their labelIds (cityscapesScripts' labels.py)
EVALUATED = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def test_labelid_outputs_scored_by_the_cityscapes_metric(checkpoint, tmp_path, capsys):
    fake.cityscapes(tmp_path / "cs", {"val": {"lindau": 2, "ulm": 1}})
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(checkpoint.read_bytes())
    images = sorted((tmp_path / "cs" / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    main(["predict", str(ckpt), *map(str, images), "--out", str(tmp_path / "p"), "--outputs", "labelid"])
    cm = np.zeros((256, 256), np.int64)
    for image in images:
        key = image.name.removesuffix("_leftImg8bit.png")
        pred = np.array(Image.open(tmp_path / "p" / f"{image.stem}_labelid.png")).astype(np.int64)
        gt = np.array(Image.open(next((tmp_path / "cs").rglob(f"{key}_gtFine_labelIds.png")))).astype(
            np.int64
        )
        for g, q in zip(gt.ravel().tolist(), pred.ravel().tolist(), strict=True):
            cm[g, q] += 1
    ious = []
    for c in EVALUATED:
        tp = cm[c, c]
        fn = sum(cm[c, o] for o in range(256) if o != c)  # every other prediction of a c pixel
        fp = sum(cm[o, c] for o in EVALUATED if o != c)  # predictions of c on evaluated pixels only
        if tp + fn + fp:
            ious.append(tp / (tp + fn + fp))
    capsys.readouterr()
    spec = f"cityscapes:{tmp_path / 'cs'}:val"
    main(["eval", str(ckpt), "--data", spec, "--workers", "0", "--json", str(tmp_path / "r.json")])
    miou = json.loads((tmp_path / "r.json").read_text())["datasets"][spec]["miou"]
    assert math.isclose(100 * sum(ious) / len(ious), miou, rel_tol=1e-12)
    assert f"{miou:.2f}" in capsys.readouterr().out

    main(
        ["predict", str(ckpt), *map(str, images), "--out", str(tmp_path / "server"), "--server", "cityscapes"]
    )
    for image in images:
        city = image.name.split("_")[0]
        sent = tmp_path / "server" / city / f"{image.stem}_labelIds.png"
        assert sent.read_bytes() == (tmp_path / "p" / f"{image.stem}_labelid.png").read_bytes()
    fake.acdc(tmp_path / "acdc", "night", "test", 2)
    fake.acdc(tmp_path / "acdc", "snow", "test", 1)
    tests = sorted((tmp_path / "acdc" / "rgb_anon").rglob("*_rgb_anon.png"))
    main(
        [
            "predict",
            str(ckpt),
            str(tmp_path / "acdc" / "rgb_anon"),
            "--out",
            str(tmp_path / "acdc-out"),
            "--server",
            "acdc",
        ]
    )
    written = sorted(
        p.relative_to(tmp_path / "acdc-out").as_posix() for p in (tmp_path / "acdc-out").rglob("*.png")
    )
    assert (
        written
        == [
            "labelTrainIds/night/GOPR0475_frame_000000.png",
            "labelTrainIds/night/GOPR0475_frame_000001.png",
            "labelTrainIds/snow/GOPR0475_frame_000000.png",
        ]
        and len(tests) == 3
    )
    ids = np.array(Image.open(tmp_path / "acdc-out" / written[0]))
    assert ids.max() < 19 and ids.shape == (fake.H, fake.W)


def test_one_precision_per_checkpoint(tmp_path, capsys):
    """famix eval, famix reproduce and training validation score the same checkpoint and data alike; the
    precision defaults to the checkpoint's run.amp wherever autocast applies."""
    spec = "synthetic:night:3:9:size=48"
    overrides = ["data.train=synthetic:day:8:size=48", f"data.val=[{spec}]", "data.crop=32", "mine.crop=32"]
    overrides += ["mine.steps=1", "mine.max_images=4", "train.iterations=3", "train.val_interval=3"]
    main(
        [
            "reproduce",
            "-c",
            "tiny",
            *overrides,
            "--seeds",
            "1",
            "--out",
            str(tmp_path / "r"),
            "--targets",
            spec,
        ]
    )
    column = next(iter(json.loads((tmp_path / "r" / "results.json").read_text())["columns"].values()))
    lines = (tmp_path / "r" / "seed0" / "metrics.jsonl").read_text().splitlines()
    validation = [json.loads(x)["val_miou"][spec] for x in lines if "val_miou" in x][-1]
    main(
        [
            "eval",
            str(tmp_path / "r" / "seed0" / "latest.pt"),
            "--data",
            spec,
            "--workers",
            "0",
            "--json",
            str(tmp_path / "e.json"),
        ]
    )
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert column["seeds"][0] == validation == evaluated["datasets"][spec]["miou"]
    assert evaluated["amp"] == "off"  # CPU: no autocast
    assert (
        "mean +/- sample standard deviation over the seeds (n - 1"
        in (tmp_path / "r" / "results.md").read_text()
    )
    ckpt = {"config": {"run": {"amp": "fp16"}}}
    cuda = torch.device("cuda")
    assert evaluate.precision(EvalSettings(), ckpt, cuda) == ("fp16", torch.float16)
    assert evaluate.precision(EvalSettings(amp="bf16"), ckpt, cuda) == ("bf16", torch.bfloat16)
    assert evaluate.precision(EvalSettings(), ckpt, torch.device("cpu")) == ("off", None)
    assert evaluate.precision(EvalSettings(), {}, cuda)[0] == "bf16"  # official files: bf16


def test_flip_runs_on_a_fixed_size_onnx_file(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(checkpoint.read_bytes())
    main(["export", str(ckpt), "--format", "onnx", "--size", "32x48", "--out", str(tmp_path / "m.onnx")])
    image = tmp_path / "im.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), np.uint8)).save(image)
    main(
        [
            "predict",
            str(tmp_path / "m.onnx"),
            str(image),
            "--out",
            str(tmp_path / "a"),
            "--flip",
            "--outputs",
            "trainid",
        ]
    )
    main(["predict", str(ckpt), str(image), "--out", str(tmp_path / "b"), "--flip", "--outputs", "trainid"])
    a = np.array(Image.open(tmp_path / "a" / "im_trainid.png"))
    b = np.array(Image.open(tmp_path / "b" / "im_trainid.png"))
    assert (a == b).mean() > 0.999  # ONNX Runtime's float32 against PyTorch's


def test_bad_test_time_options(checkpoint, tmp_path, capsys):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(checkpoint.read_bytes())
    evaluate_ = ["eval", ckpt, "--data", SPEC]
    assert "--scales must be factors in (0, 8]" in one_line(capsys, *evaluate_, "--scales", "0")
    assert "got 1 -1" in one_line(capsys, *evaluate_, "--scales", "1", "-1")
    assert "got 100" in one_line(capsys, *evaluate_, "--scales", "100")
    assert "--scale must be a factor in (0, 8]" in one_line(capsys, *evaluate_, "--scale", "50")
    assert "--scales replaces --scale" in one_line(capsys, *evaluate_, "--scales", "1", "--scale", "0.5")
    err = one_line(capsys, *evaluate_, "--protocol", "mmseg", "--window", "256")
    assert "--protocol mmseg sets the resize and the sliding window itself: drop --window" in err
    fake.cityscapes(tmp_path / "cs", {"val": {"lindau": 1}})
    image = next((tmp_path / "cs" / "leftImg8bit").rglob("*.png"))
    err = one_line(capsys, "predict", ckpt, image, "--out", tmp_path / "o", "--server", "acdc")
    assert f"--server acdc: {image} is not an ACDC image" in err
    other = tmp_path / "photo.png"
    other.write_bytes(image.read_bytes())
    err = one_line(capsys, "predict", ckpt, other, "--out", tmp_path / "o", "--server", "cityscapes")
    assert "photo.png is not a Cityscapes image" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.png"))
    err = one_line(
        capsys, "predict", ckpt, image, "--out", tmp_path / "o", "--server", "acdc", "--outputs", "color"
    )
    assert "--server acdc writes the server's own files (one per image), so --outputs is not used" in err


def test_validation_takes_the_test_time_settings(tmp_path):
    spec = "synthetic:night:2:9:size=40"
    out = tmp_path / "run"
    overrides = [
        "data.train=synthetic:day:8:size=40",
        f"data.val=[{spec}]",
        "data.crop=32",
        "style.mix=mixstyle",
    ]
    overrides += [
        "train.iterations=2",
        "train.val_interval=2",
        "train.val_flip=true",
        "train.val_scales=[0.75, 1]",
    ]
    main(["train", "-c", "tiny", *overrides, f"train.out={out}"])
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "val_miou" in x][-1]
    flags = ["--flip", "--scales", "0.75", "1", "--workers", "0", "--json", str(tmp_path / "f.json")]
    main(["eval", str(out / "latest.pt"), "--data", spec, *flags])
    assert logged["val_miou"][spec] == json.loads((tmp_path / "f.json").read_text())["datasets"][spec]["miou"]
