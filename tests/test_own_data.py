"""Your own data and classes through every command: miniature-world scenes written as a ``folder:`` dataset
under a user label set (5 merged classes, index or colour labels; binary; 40 classes), mined, trained,
evaluated, predicted and exported with the README's commands. The mIoU famix reports must equal the one
this test computes from the predicted index PNGs and the label files; a benchmark layout under Cityscapes'
categories must give the category IoUs of the 19-class confusion matrix; bad inputs get one clear line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from famix.cli import main
from famix.config import load_config
from famix.data.datasets import build_dataset
from famix.data.label_sets import load as load_label_set
from famix.engine.checkpoint import load_checkpoint
from famix.stages import mine
from famix.style.bank import StyleBank
from famix.world.synthetic import render
from tests import fake_datasets as fake
from tests.cli_errors import one_line

# The world's trainIds: road 0, sidewalk 1, building 2, wall 3, fence 4, pole 5, traffic light 6, sign 7,
# vegetation 8, terrain 9, sky 10, person 11, car 13 (and 255, ignore).
FIVE = {
    "ignore_color": [0, 0, 0],  # encoding=rgb: black pixels are ignored
    "classes": [
        {"name": "flat", "color": [128, 64, 128], "ids": [0, 1], "prompt": "road"},
        {"name": "construction", "color": [70, 70, 70], "ids": [2, 3, 4, 5, 6, 7]},
        {"name": "nature", "color": [107, 142, 35], "ids": [8, 9], "prompt": "trees and grass"},
        {"name": "sky", "color": [70, 130, 180], "ids": [10]},
        {"name": "traffic", "color": [220, 20, 60], "ids": [11, 13], "prompt": "car or person"},
    ],
}
BINARY = {
    "classes": [
        {"name": "background", "color": [0, 0, 0], "ids": list(range(11))},
        {"name": "road user", "color": [255, 255, 255], "ids": [11, 13], "prompt": "car or pedestrian"},
    ]
}
WORLD_IDS = [*range(12), 13]
FORTY = {  # 13 classes the world has, 27 it never shows (their banks stay empty: the mixer falls back)
    "classes": [{"name": f"thing {i}", "ids": [i]} for i in WORLD_IDS]
    + [{"name": f"absent {i}", "ids": [100 + i]} for i in range(27)]
}
SPLITS = {"train": (8, 0), "val": (3, 500)}
SIZE = 48


def class_of(raw: int, spec: dict) -> int:
    """The class of a raw label value under a label-set mapping, written out plainly (255: none)."""
    for k, c in enumerate(spec["classes"]):
        if raw in c.get("ids", [k]):
            return k
    return 255


def write_folder(root: Path, spec: dict, encoding: str) -> None:
    """Scenes as ROOT/images/SPLIT/<sub>/sN.(png|jpg) and labels/SPLIT/<sub>/sN.png: raw world ids (index)
    or each class's colour, ignore in black, which the label set ignores (rgb)."""
    for split, (n, offset) in SPLITS.items():
        for i in range(n):
            image, label = render(offset + i, "day", (SIZE, SIZE))
            sub = "a" if i % 2 else "b"
            img = root / "images" / split / sub / (f"s{i}.jpg" if i == 1 else f"s{i}.png")
            lab = root / "labels" / split / sub / f"s{i}.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            lab.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(img, quality=100)
            if encoding == "index":
                Image.fromarray(label).save(lab)
            else:
                colours = np.zeros((256, 3), np.uint8)
                for raw in np.unique(label):
                    k = class_of(int(raw), spec)
                    if k != 255:
                        colours[raw] = spec["classes"][k]["color"]
                Image.fromarray(colours[label]).save(lab)


def truth(label_file: Path, spec: dict, encoding: str) -> np.ndarray:
    """The class of every pixel of a label file, by this test's own reading."""
    raw = np.array(Image.open(label_file))
    out = np.full(raw.shape[:2], 255, np.int64)
    if encoding == "index":
        for value in np.unique(raw):
            out[raw == value] = class_of(int(value), spec)
    else:
        for k, c in enumerate(spec["classes"]):
            out[(raw == np.array(c["color"])).all(-1)] = k
    return out


def miou_of(pairs: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[float, list[float | None]]:
    """mIoU (%) over classes with a non-empty union, from a confusion matrix counted pixel by pixel."""
    cm = np.zeros((k, k), np.int64)
    for pred, gt in pairs:
        for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist(), strict=True):
            if g != 255:
                cm[g, p] += 1
    ious = []
    for c in range(k):
        union = cm[c].sum() + cm[:, c].sum() - cm[c, c]
        ious.append(100 * cm[c, c] / union if union else None)
    present = [v for v in ious if v is not None]
    return sum(present) / len(present), ious


def run_cli(*argv: str) -> None:
    main([str(a) for a in argv])


@pytest.mark.parametrize(
    "name,spec,encoding",
    [
        ("five", FIVE, "index"),
        ("five-rgb", FIVE, "rgb"),
        ("binary", BINARY, "index"),
        ("forty", FORTY, "index"),
    ],
)
def test_own_data_through_every_stage(tmp_path, monkeypatch, capsys, name, spec, encoding):
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "data", spec, encoding)
    Path("classes.yaml").write_text(yaml.safe_dump(spec))
    data = "folder:data:{}" + (":encoding=rgb" if encoding == "rgb" else "")
    overrides = [
        "model.classes=classes.yaml",
        f"data.train={data.format('train')}",
        f"data.val=[{data.format('val')}]",
        "data.crop=32",
        "mine.crop=32",
        "style.bank=bank.safetensors",
        "mine.steps=2",
        "mine.max_images=8",
        "train.out=run",
        "train.iterations=4",
        "train.val_interval=2",
    ]
    labels = load_label_set("classes.yaml")
    run_cli("mine", "-c", "tiny", *overrides)
    bank = StyleBank.load("bank.safetensors")
    assert bank.class_names == labels.names == [c["name"] for c in spec["classes"]]
    assert bank.metadata["label_set"] == labels.to_dict()
    assert sum(n for c, n in bank.counts().items() if c != "ignore") > 0
    run_cli("train", "-c", "tiny", *overrides)
    ckpt = load_checkpoint("run/best.pt")
    assert ckpt["config"]["model"]["classes"] == labels.to_dict()
    assert ckpt["model_state"]["classifier.classifier.3.weight"].shape[0] == len(spec["classes"])
    capsys.readouterr()

    val = data.format("val")
    run_cli(
        "eval",
        "run/best.pt",
        "--data",
        val,
        "--per-class",
        "--batch-size",
        "1",
        "--workers",
        "0",
        "--json",
        "r.json",
    )
    table = capsys.readouterr().out
    for c in spec["classes"]:
        assert f"| {c['name']} |" in table
    result = json.loads(Path("r.json").read_text())
    assert result["label_set"] == labels.to_dict()
    reported = result["datasets"][val]
    assert list(reported["per_class_iou"]) == labels.names

    run_cli("predict", "run/best.pt", "data/images/val", "--out", "pred", "--batch-size", "1")
    pairs, colours = [], labels.colors()
    for label_file in sorted((tmp_path / "data" / "labels" / "val").rglob("*.png")):
        stem = label_file.stem
        pred = np.array(Image.open(f"pred/{stem}_trainid.png")).astype(np.int64)
        colour = np.array(Image.open(f"pred/{stem}_color.png"))[: pred.shape[0]]  # the legend below it
        for k in np.unique(pred):
            given = spec["classes"][k].get("color")
            assert given is None or (colour[pred == k] == given).all()
            assert (colour[pred == k] == colours[k]).all()
        pairs.append((pred, truth(label_file, spec, encoding)))
    assert len(pairs) == SPLITS["val"][0] and all(p.max() < len(spec["classes"]) for p, _ in pairs)
    miou, ious = miou_of(pairs, len(spec["classes"]))
    assert math.isclose(reported["miou"], miou, rel_tol=1e-9, abs_tol=1e-9)
    for got, want in zip(reported["per_class_iou"].values(), ious, strict=True):
        assert (got is None and want is None) or math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)

    if name == "five":
        pytest.importorskip("onnxruntime")
        run_cli("export", "run/best.pt", "--format", "onnx", "--size", "32x32", "--out", "m.onnx")
        import onnx

        meta = {p.key: p.value for p in onnx.load("m.onnx").metadata_props}
        assert json.loads(meta["label_set"]) == labels.to_dict()
        assert json.loads(meta["class_names"]) == labels.names
        crops = tmp_path / "crops"
        crops.mkdir()
        Image.open("pred/s0_color.png").crop((0, 0, 32, 32)).save(crops / "c.png")
        run_cli("predict", "m.onnx", crops / "c.png", "--out", "pred-onnx")
        ids = np.array(Image.open("pred-onnx/c_trainid.png"))
        assert (np.array(Image.open("pred-onnx/c_color.png"))[: ids.shape[0]] == colours[ids]).all()


def test_folder_layout_options_and_pairing(tmp_path):
    """images=/labels=/suffix= options, pairing by relative path and stem, the relabelled benchmark view."""
    root = tmp_path / "mine"
    for i, sub in enumerate(["x", "x/y", "z"]):
        fake.write_image(root / "rgb" / sub / f"f{i}.webp", i)
        fake.write_grey(root / "gt" / sub / f"f{i}_ids.png", fake.raster([0, 1, 2, 255], first=i))
    fake.write_image(root / "rgb" / "z" / "f0.png", 9)  # same stem in another folder: its own pair
    fake.write_grey(root / "gt" / "z" / "f0_ids.png", fake.raster([1]))
    ds = build_dataset(f"folder:{root}:images=rgb:labels=gt:suffix=_ids")
    assert len(ds) == 4
    for i in range(len(ds)):
        image, label = ds[i]
        pair = ds.pairs[i]
        assert pair.label.parent.relative_to(root / "gt") == pair.image.parent.relative_to(root / "rgb")
        assert pair.label.name == pair.image.stem + "_ids.png" and image.shape == (3, fake.H, fake.W)
    with pytest.raises(FileNotFoundError, match=r"folder: images folder not found: .*mine/images"):
        build_dataset(f"folder:{root}")
    with pytest.raises(ValueError, match="option encoding='colour': expected one of index, rgb"):
        build_dataset(f"folder:{root}:images=rgb:labels=gt:suffix=_ids:encoding=colour")
    with pytest.raises(ValueError, match="unknown option 'classes'"):
        build_dataset(f"folder:{root}:classes=x.yaml")
    fake.write_image(root / "rgb" / "extra.png", 3)
    with pytest.raises(ValueError, match=r"image without label: .*extra.png \(expected .*gt/extra_ids.png\)"):
        build_dataset(f"folder:{root}:images=rgb:labels=gt:suffix=_ids")


def test_benchmark_data_under_a_label_set(tmp_path):
    """A benchmark dataset's trainIds seen through a label set: each label value becomes its class."""
    fake.cityscapes(tmp_path / "cs", {"val": {"lindau": 2}})
    plain = build_dataset(f"cityscapes:{tmp_path / 'cs'}:val")
    categories = load_label_set("cityscapes_categories")
    grouped = build_dataset(f"cityscapes:{tmp_path / 'cs'}:val", categories)
    assert (
        build_dataset(f"cityscapes:{tmp_path / 'cs'}:val", load_config().model.labels).__class__
        is plain.__class__
    )
    spec = categories.to_dict()
    for i in range(len(plain)):
        (image, label), (image2, label2) = plain[i], grouped[i]
        assert torch.equal(image, image2)
        expected = torch.tensor(
            [[class_of(int(v), spec) for v in row] for row in label.tolist()], dtype=torch.uint8
        )
        assert torch.equal(label2, expected) and set(label.unique().tolist()) > set(range(19))


def test_cityscapes_categories_from_the_19_class_confusion(tmp_path, checkpoint, capsys):
    fake.cityscapes(tmp_path / "cs", {"val": {"lindau": 2, "ulm": 1}})
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(checkpoint.read_bytes())
    spec = f"cityscapes:{tmp_path / 'cs'}:val"
    common = ["--batch-size", "1", "--workers", "0", "--device", "cpu"]
    run_cli("eval", ckpt, "--data", spec, *common, "--json", tmp_path / "19.json")
    run_cli(
        "eval",
        ckpt,
        "--data",
        spec,
        *common,
        "--group",
        "cityscapes_categories",
        "--per-class",
        "--json",
        tmp_path / "7.json",
    )
    out = capsys.readouterr().out
    cm = np.array(json.loads((tmp_path / "19.json").read_text())["datasets"][spec]["confusion"])
    assert cm.sum() > 0 and cm.shape == (19, 19)
    categories = yaml.safe_load(
        (Path(__file__).parents[1] / "src/famix/configs/classes/cityscapes_categories.yaml").read_text()
    )
    group = {i: g for g, c in enumerate(categories["classes"]) for i in c["ids"]}
    cm7 = np.zeros((7, 7), np.int64)
    for i in range(19):
        for j in range(19):
            cm7[group[i], group[j]] += cm[i, j]
    result = json.loads((tmp_path / "7.json").read_text())
    got = result["datasets"][spec]
    assert got["confusion"] == cm7.tolist()
    names = [c["name"] for c in categories["classes"]]
    assert list(got["per_class_iou"]) == names and result["label_set"]["classes"][0]["name"] == "flat"
    for k, name in enumerate(names):
        union = cm7[k].sum() + cm7[:, k].sum() - cm7[k, k]
        want = 100 * cm7[k, k] / union if union else None
        assert (got["per_class_iou"][name] is None and want is None) or math.isclose(
            got["per_class_iou"][name], want
        )
        assert f"| {name} |" in out
    assert (tmp_path / "19.json").read_text() != (tmp_path / "7.json").read_text()


def test_bad_own_data_inputs(tmp_path, monkeypatch, capsys, checkpoint):
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "data", FIVE, "index")
    label = tmp_path / "data" / "labels" / "val" / "b" / "s0.png"
    raw = np.array(Image.open(label))
    raw[0, :3] = 77  # a value no class claims
    Image.fromarray(raw).save(label)
    Path("five.yaml").write_text(yaml.safe_dump(FIVE))
    with pytest.raises(SystemExit) as exit_info:
        run_cli("datasets", "check", "folder", "data", "--classes", "five.yaml")
    out = capsys.readouterr().out
    assert exit_info.value.code == 1
    assert "PROBLEM: all: label value 77 is not a known id" in out and "s0.png" in out and "flat" in out
    with pytest.warns(
        UserWarning, match=r"s0.png holds 1 value\(s\) no class of the label set claims \(e.g. 77"
    ):
        ds = build_dataset("folder:data:val", load_label_set("five.yaml"))
        labels = [ds[i][1] for i in range(len(ds))]
    assert any((lab[0, :3] == 255).all() for lab in labels)

    write_folder(tmp_path / "rgb", FIVE, "rgb")
    colour = next((tmp_path / "rgb" / "labels").rglob("*.png"))
    pixels = np.array(Image.open(colour))
    pixels[1, 1] = (1, 2, 3)
    Image.fromarray(pixels).save(colour)
    with pytest.raises(SystemExit):
        run_cli("datasets", "check", "folder:rgb:encoding=rgb", "--classes", "five.yaml")
    out = capsys.readouterr().out
    assert "label colour (1, 2, 3) is not a known id" in out

    Path("dup.yaml").write_text("classes: [{name: a, ids: [1]}, {name: b, ids: [1, 2]}]\n")
    err = one_line(capsys, "train", "-c", "tiny", "model.classes=dup.yaml")
    assert "label set dup.yaml: id 1 is claimed by both 'a' and 'b'" in err
    Path("twice.yaml").write_text("classes: [road, road]\n")
    err = one_line(capsys, "mine", "-c", "tiny", "model.classes=twice.yaml")
    assert "label set twice.yaml: two classes are named 'road'" in err

    err = one_line(capsys, "eval", checkpoint, "--data", "folder:data:val", "--classes", "five.yaml")
    assert "predicts 19 classes (road, sidewalk" in err and "--classes five.yaml is 5 classes (flat" in err
    assert "--group" in err

    bank = tmp_path / "bank19.safetensors"
    cfg19 = load_config(
        "tiny",
        [
            f"style.bank={bank}",
            "data.train=folder:data:train",
            "mine.steps=1",
            "mine.max_images=4",
            "data.crop=32",
            "mine.crop=32",
        ],
    )
    mine.run(cfg19, progress=False)
    err = one_line(
        capsys,
        "train",
        "-c",
        "tiny",
        "model.classes=five.yaml",
        f"style.bank={bank}",
        "data.train=folder:data:train",
        "data.val=[]",
        "data.crop=32",
    )
    assert f"style bank {bank} was mined for the label set of 19 classes (road" in err
    assert "the model's label set (model.classes) is 5 classes (flat" in err

    Path("empty").mkdir()
    err = one_line(
        capsys,
        "train",
        "-c",
        "tiny",
        "model.classes=five.yaml",
        "data.train=folder:empty:train",
        "data.val=[]",
        hint=True,
    )
    assert err.endswith("data.train folder:empty:train: folder: images folder not found: empty/images/train")
    err = one_line(capsys, "train", "-c", "tiny", "model.classes=five.yaml", "model.class_names=[a, b]")
    assert "contradicts model.classes" in err


def test_torchrun_trains_on_own_data(tmp_path):
    """Two CPU processes (gloo) train a 5-class model on a folder dataset, validating on it."""
    import os
    import subprocess
    import sys

    write_folder(tmp_path / "data", FIVE, "index")
    (tmp_path / "five.yaml").write_text(yaml.safe_dump(FIVE))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29541"]
    cmd += ["-m", "famix", "train", "-c", "tiny", f"model.classes={tmp_path / 'five.yaml'}"]
    cmd += [f"data.train=folder:{tmp_path / 'data'}:train", f"data.val=[folder:{tmp_path / 'data'}:val]"]
    cmd += [
        f"train.out={tmp_path / 'run'}",
        "train.iterations=2",
        "train.val_interval=2",
        "style.mix=mixstyle",
    ]
    cmd += ["data.batch_size=2", "data.crop=32"]
    root = Path(__file__).parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["config"]["model"]["classes"] == load_label_set(tmp_path / "five.yaml").to_dict()
    assert ckpt["model_state"]["classifier.classifier.3.weight"].shape[0] == 5


def test_reproduce_and_adapt_on_own_data(tmp_path, monkeypatch, capsys):
    """famix reproduce with user targets, then famix adapt of its model: both keep the label set."""
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "data", FIVE, "index")
    Path("five.yaml").write_text(yaml.safe_dump(FIVE))
    labels = load_label_set("five.yaml")
    overrides = ["model.classes=five.yaml", "data.train=folder:data:train", "data.val=[]", "data.crop=32"]
    overrides += ["mine.crop=32", "mine.steps=1", "mine.max_images=4", "train.iterations=2"]
    run_cli(
        "reproduce",
        "-c",
        "tiny",
        *overrides,
        "--seeds",
        "1",
        "--out",
        "repro",
        "--targets",
        "folder:data:val",
    )
    result = json.loads(Path("repro/results.json").read_text())
    (column,) = result["columns"].values()
    assert list(column["per_class_iou"]) == labels.names and column["paper"] is None
    assert StyleBank.load("repro/bank.safetensors").metadata["label_set"] == labels.to_dict()

    adapt = ["--iterations", "2", "--steps", "2", "--crop", "32", "--batch-size", "2", "--device", "cpu"]
    run_cli(
        "adapt",
        "repro/seed0/latest.pt",
        "--target",
        "at night",
        "--data",
        "folder:data:train",
        "--out",
        "ad",
        *adapt,
    )
    (run,) = [p for p in Path("ad").iterdir() if p.is_dir()]
    ckpt = load_checkpoint(run / "latest.pt")
    assert ckpt["config"]["model"]["classes"] == labels.to_dict() and ckpt["run"]["kind"] == "adapt"
    assert StyleBank.load(run / "styles.safetensors").metadata["label_set"] == labels.to_dict()
    capsys.readouterr()
    run_cli("eval", run / "latest.pt", "--data", "folder:data:val", "--per-class", "--workers", "0")
    table = capsys.readouterr().out
    assert all(f"| {name} |" in table for name in labels.names)


# Cityscapes labelIds of the 19 classes, in trainId order (cityscapesScripts' labels.py)
LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def test_eval_classes_gives_an_official_checkpoint_its_ids(tmp_path, checkpoint):
    """A checkpoint storing no label set (as official ones) reads a folder of raw labelIds through
    --classes: the same confusion as the Cityscapes loader's own labelId map on the same files."""
    import shutil

    from famix.data.trainids import CLASS_NAMES

    fake.cityscapes(tmp_path / "cs", {"val": {"lindau": 2}})
    for image in (tmp_path / "cs" / "leftImg8bit").rglob("*_leftImg8bit.png"):
        key = image.name.removesuffix("_leftImg8bit.png")
        (tmp_path / "mine" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "mine" / "labels").mkdir(parents=True, exist_ok=True)
        shutil.copy(image, tmp_path / "mine" / "images" / f"{key}.png")
        shutil.copy(
            next((tmp_path / "cs").rglob(f"{key}_gtFine_labelIds.png")),
            tmp_path / "mine" / "labels" / f"{key}.png",
        )
    ids = tmp_path / "labelids.yaml"
    ids.write_text(
        yaml.safe_dump(
            {"classes": [{"name": n, "ids": [i]} for n, i in zip(CLASS_NAMES, LABEL_IDS, strict=True)]}
        )
    )
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(checkpoint.read_bytes())
    common = ["--batch-size", "1", "--workers", "0", "--device", "cpu"]
    bench, own = f"cityscapes:{tmp_path / 'cs'}:val", f"folder:{tmp_path / 'mine'}"
    run_cli("eval", ckpt, "--data", bench, *common, "--json", tmp_path / "a.json")
    run_cli("eval", ckpt, "--data", own, "--classes", ids, *common, "--json", tmp_path / "b.json")
    a = json.loads((tmp_path / "a.json").read_text())["datasets"][bench]
    b = json.loads((tmp_path / "b.json").read_text())["datasets"][own]
    assert a["confusion"] == b["confusion"] and np.array(a["confusion"]).sum() > 0
    run_cli(
        "eval", ckpt, "--data", own, *common, "--json", tmp_path / "c.json"
    )  # read as trainIds: not the same
    assert json.loads((tmp_path / "c.json").read_text())["datasets"][own]["confusion"] != a["confusion"]
