"""Benchmark loaders on tiny fake datasets in the exact layouts: pairing, counts, label maps, protocol."""

import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from famix.data import datasets
from famix.data.datasets import ENTRY_POINTS, build_dataset, describe_datasets
from famix.data.entry import DatasetEntry
from famix.data.specs import ALIASES, WITH_CONDITION, parse_fields, parse_spec
from famix.data.transforms import source_transform
from tests import fake_datasets as fake

# Label maps written out independently of the code under test (datasets.md tables).
CITYSCAPES = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
              25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
SYNTHIA = {1: 10, 2: 2, 3: 0, 4: 1, 5: 4, 6: 8, 7: 5, 8: 13, 9: 7, 10: 11, 11: 18, 12: 17, 15: 6,
           16: 9, 17: 12, 18: 14, 19: 15, 20: 16, 21: 3}  # fmt: skip
MAPILLARY = {13: 0, 24: 0, 41: 0, 2: 1, 15: 1, 17: 2, 6: 3, 3: 4, 45: 5, 47: 5, 48: 6, 50: 7, 30: 8,
             29: 9, 27: 10, 19: 11, 20: 12, 21: 12, 22: 12, 55: 13, 61: 14, 54: 15, 58: 16, 57: 17,
             52: 18}  # fmt: skip


def expected(raw: np.ndarray, table: dict[int, int]) -> torch.Tensor:
    return torch.tensor([[table.get(int(v), 255) for v in row] for row in raw])


def pixel(image: torch.Tensor) -> int:
    return int(image[0, 0, 0])


def test_cityscapes_pairs_counts_and_label_ids(tmp_path):
    fake.cityscapes(tmp_path, {"train": {"aachen": 2, "bochum": 1}, "val": {"lindau": 2}})
    train = build_dataset(f"cityscapes:{tmp_path}:train")
    val = build_dataset(f"cityscapes:{tmp_path}:val")
    everything = build_dataset(f"cityscapes:{tmp_path}")
    assert (len(train), len(val), len(everything)) == (3, 2, 5)
    assert train.spec == f"cityscapes:{tmp_path}:train"
    for k in range(5):
        image, label = everything[k]  # sorted: train/aachen, train/bochum, val/lindau
        assert image.dtype == torch.uint8 and image.shape == (3, fake.H, fake.W)
        assert label.dtype == torch.uint8 and label.shape == (fake.H, fake.W)
        assert pixel(image) == k  # image k came with label k
        raw = fake.raster(fake.CITYSCAPES_VALUES, first=7 + k)
        assert torch.equal(label, expected(raw, CITYSCAPES))
    assert int(everything[0][1][0, 0]) == 0 and int(everything[4][1][0, 0]) == 2  # id 7 road, 11 building


def test_cityscapes_label_train_ids_fallback(tmp_path):
    fake.cityscapes(tmp_path, {"val": {"lindau": 1}})
    gt = tmp_path / "gtFine/val/lindau"
    (gt / "lindau_000000_000019_gtFine_labelIds.png").unlink()
    fake.write_grey(gt / "lindau_000000_000019_gtFine_labelTrainIds.png", fake.raster([3, 18, 255]))
    _, label = build_dataset(f"cityscapes:{tmp_path}:val")[0]
    assert label[0, :3].tolist() == [3, 18, 255]


def test_gta5_palette_ids_split_lists_and_all_pairs(tmp_path):
    fake.gta5(tmp_path, 5)
    assert len(build_dataset(f"gta5:{tmp_path}")) == 5
    image, label = build_dataset(f"gta5:{tmp_path}")[2]  # 00003
    assert pixel(image) == 3
    assert torch.equal(label, expected(fake.raster(fake.CITYSCAPES_VALUES, first=10), CITYSCAPES))
    # PIL would give indices too, but a colour conversion would not: the loader must use the index.
    assert Image.open(tmp_path / "labels/00003.png").mode == "P"
    (tmp_path / "gtav_split_train.txt").write_text("00004.png\n\n# comment\n00002.png\n")
    train = build_dataset(f"gta5:{tmp_path}:train")
    assert [pixel(train[i][0]) for i in range(len(train))] == [4, 2]  # the list's order
    listed = tmp_path / "my_list.txt"
    listed.write_text("images/00005.png\n")
    assert pixel(build_dataset(f"gta5:{tmp_path}:{listed}")[0][0]) == 5


def test_gta5_size_mismatch_skip_count_or_error(tmp_path):
    fake.gta5(tmp_path, 4, bad=(2,))
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = build_dataset(f"gta5:{tmp_path}")
    assert len(ds) == 3 and len(ds.skipped) == 1 and "00002.png" in str(ds.skipped[0][0])
    with pytest.raises(ValueError, match=r"labels/00002\.png.*mismatch=skip"):
        build_dataset(f"gta5:{tmp_path}::mismatch=error")
    resized = build_dataset(f"gta5:{tmp_path}::mismatch=resize")
    assert len(resized) == 4 and resized[1][1].shape == (fake.H, fake.W)


def test_gta5_val_centre_crop(tmp_path):
    fake.gta5(tmp_path, 2)
    (tmp_path / "gtav_split_val.txt").write_text("00001.png\n")
    image, label = build_dataset(f"gta5:{tmp_path}:val")[0]
    assert image.shape == (3, 1046, 1914) and label.shape == (1046, 1914)  # official crop, padded
    top, left = (1046 - fake.H) // 2, (1914 - fake.W) // 2
    assert int(image[0, top, left]) == 1 and int(image[:, 0, 0].sum()) == 0
    assert (label[:top] == 255).all() and int(label[top, left]) == 1  # id 8 -> sidewalk inside
    image, label = build_dataset(f"gta5:{tmp_path}:val:center_crop=8x10")[0]
    assert image.shape == (3, 8, 10) and label.shape == (8, 10)
    assert build_dataset(f"gta5:{tmp_path}:val:center_crop=none")[0][0].shape == (3, fake.H, fake.W)


def test_synthia_16bit_channel0_ids(tmp_path):
    fake.synthia(tmp_path, {"train": 2, "val": 1})
    train, val = build_dataset(f"synthia:{tmp_path}:train"), build_dataset(f"synthia:{tmp_path}:val")
    assert (len(train), len(val), len(build_dataset(f"synthia:{tmp_path}"))) == (2, 1, 3)
    image, label = val[0]
    assert pixel(image) == 2
    raw = fake.raster(fake.SYNTHIA_VALUES, first=3)
    assert torch.equal(label, expected(raw, SYNTHIA))
    assert int(label[0, 0]) == 0  # SYNTHIA 3 = road
    # Why the loader avoids PIL: it keeps the high byte of 16-bit RGB, so every class id reads as 0.
    via_pil = np.array(Image.open(tmp_path / "GT/LABELS/val/0000002.png"))[..., 0]
    classes = raw < 256  # (the 300 in the fake label has a high byte of 1)
    assert (via_pil[classes] == 0).all() and (raw[classes] != 0).mean() > 0.9


def test_synthia_flat_layout_with_named_split_list(tmp_path):
    fake.synthia(tmp_path, {"": 3})  # flat RGB/*.png, GT/LABELS/*.png
    (tmp_path / "synthia_split_val.txt").write_text("0000001.png\n")
    assert len(build_dataset(f"synthia:{tmp_path}")) == 3
    assert pixel(build_dataset(f"synthia:{tmp_path}:val")[0][0]) == 1


@pytest.mark.parametrize("official", [False, True])
def test_bdd_layouts_identity_map(tmp_path, official):
    fake.bdd(tmp_path, 2, official=official)
    ds = build_dataset(f"bdd100k:{tmp_path}:val")
    assert len(ds) == 2 and len(build_dataset(f"bdd:{tmp_path}")) == 2
    image, label = ds[1]
    assert abs(pixel(image) - 10) <= 2  # JPEG
    table = {i: i for i in range(19)}
    assert torch.equal(label, expected(fake.raster(fake.BDD_VALUES, first=1), table))


def test_mapillary_map_resize_and_centre_crop_pad(tmp_path):
    fake.mapillary(tmp_path, [(24, 16), (16, 40)])  # a portrait and a landscape image
    plain = build_dataset(f"mapillary:{tmp_path}:val:size=none")
    assert len(plain) == 2
    assert torch.equal(plain[0][1], expected(fake.raster(fake.MAPILLARY_VALUES, 24, 16), MAPILLARY))
    ds = build_dataset(f"mapillary:{tmp_path}:validation:size=32")
    image, label = ds[0]  # 24x16 -> height 32, width int(16 / 24 * 32) = 21 -> padded to 32x32
    assert image.shape == (3, 32, 32) and label.shape == (32, 32)
    assert (label[:, :5] == 255).all() and (label[:, 26:] == 255).all()  # mask padded with ignore
    assert (image[:, :, :5] == 0).all() and (label[:, 5:26] != 255).any()
    inner = np.array(Image.fromarray(plain[0][1].numpy().astype(np.uint8)).resize((21, 32), Image.NEAREST))
    assert torch.equal(label[:, 5:26], torch.from_numpy(inner).long())
    image, label = ds[1]  # 16x40 -> 32x80 -> centre crop columns 24..55
    assert image.shape == (3, 32, 32) and not (label == 255).all(dim=0).any()


def test_mapillary_v12_labels_folder_of_the_v2_zip(tmp_path):
    fake.mapillary(tmp_path, [(16, 24)], labels_dir="v1.2/labels")
    assert len(build_dataset(f"mapillary:{tmp_path}:val")) == 1


def test_acdc_conditions_splits_and_fog_filter(tmp_path):
    fake.acdc(tmp_path, "night", "val", 3)
    fake.acdc(tmp_path, "night", "train", 2)
    fake.acdc(tmp_path, "fog", "val", 3, sizes={1: (16, 20)})
    night = build_dataset(f"acdc:night:{tmp_path}:val")
    assert len(night) == 3 and len(build_dataset(f"acdc:night:{tmp_path}")) == 5
    image, label = night[2]
    assert pixel(image) == 2
    assert torch.equal(label, expected(fake.raster(fake.CITYSCAPES_VALUES, first=9), CITYSCAPES))
    fog = build_dataset(f"acdc:fog:{tmp_path}:val:fog_size={fake.H}x{fake.W}")
    assert len(fog) == 2 and len(fog.skipped) == 1 and "frame_000001" in str(fog.skipped[0][0])
    assert len(build_dataset(f"acdc:fog:{tmp_path}:val:fog_size=none")) == 3
    with pytest.raises(ValueError, match="official|no image/label pairs left"):
        build_dataset(f"acdc:fog:{tmp_path}:val")  # default 1920x1080 keeps none of the tiny images
    with pytest.raises(ValueError, match="fog, night, rain, snow"):
        build_dataset(f"acdc:{tmp_path}:val")


def test_synthia_transform_sizes():
    image = torch.randint(0, 255, (3, 24, 40), dtype=torch.uint8)
    label = torch.randint(0, 19, (24, 40))
    g = torch.Generator().manual_seed(0)
    out_image, out_label, params = source_transform("synthia", 32, 0.8, 0.5)(image, label, g)
    assert out_image.shape == (3, 32, 32) and out_image.dtype == torch.uint8 and params.shape == (6,)
    assert out_label.dtype == torch.uint8 and out_label.shape == (32, 32)
    assert set(out_label.unique().tolist()) <= set(range(19)) | {255}
    out_image, out_label, _ = source_transform("gta5", 16)(image, label, g)
    assert out_image.shape == (3, 16, 16) and out_label.shape == (16, 16)


def test_synthetic_specs_come_from_the_entry_point_without_importing_the_world():
    """A library user's first call: famix.data imports nothing of the world; the spec still resolves."""
    code = (
        "import sys\n"
        "from famix.data.datasets import build_dataset\n"
        "assert 'famix.world' not in sys.modules, 'famix.data imported the world'\n"
        "ds = build_dataset('synthetic:day:4')\n"
        "print(len(ds), type(ds).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["4", "SyntheticDataset"]


def test_other_packages_add_datasets_as_entry_points(tmp_path, monkeypatch):
    points = [
        EntryPoint("mycity", "famix.data.cityscapes:ENTRY", ENTRY_POINTS),  # a package's own dataset
        EntryPoint("notadataset", "famix.data.cityscapes:SPLITS", ENTRY_POINTS),
        EntryPoint("broken", "famix_no_such_package.datasets:ENTRY", ENTRY_POINTS),
    ]
    monkeypatch.setattr(datasets, "entry_points", lambda group: [p for p in points if p.group == group])
    monkeypatch.setattr(datasets, "DATASETS", dict(datasets.DATASETS))
    fake.cityscapes(tmp_path, {"val": {"lindau": 2}})
    assert len(build_dataset(f"mycity:{tmp_path}:val")) == 2
    with pytest.raises(TypeError, match="notadataset = 'famix.data.cityscapes:SPLITS' is a tuple, not a"):
        build_dataset(f"notadataset:{tmp_path}")
    with pytest.raises(ImportError, match="broken = 'famix_no_such_package.datasets:ENTRY' cannot be loaded"):
        build_dataset(f"broken:{tmp_path}")
    with pytest.raises(
        ValueError, match="unknown dataset 'kitti'.* known datasets are .*mycity.*'famix.datasets'"
    ):
        build_dataset("kitti:/data")
    listing = describe_datasets()  # the specs of every dataset; the entry points that cannot be loaded named
    assert "mycity:" in listing and "not available: the famix.datasets entry point broken" in listing


def test_parse_spec_names_aliases_conditions_options_and_errors():
    """One parser for the spec grammar: the name lower-cased with aliases resolved, the parts as loaders
    read them (options anywhere, a ``/`` before ``=`` makes a path), the spec rebuilt with another root."""
    spec = parse_spec("GTAV:/data/gta5:val:center_crop=none")
    assert (spec.name, spec.written_name) == ("gta5", "GTAV")
    assert spec.fields == ("/data/gta5", "val", "center_crop=none")
    assert (spec.condition, spec.root, spec.split) == (None, "/data/gta5", "val")
    assert spec.option("center_crop") == "none" and spec.option("mismatch") is None
    assert parse_spec("bdd:/b").name == "bdd100k" and parse_spec("Cityscapes:/c").name == "cityscapes"
    assert set(ALIASES.values()) <= set(datasets.dataset_entries())
    acdc = parse_spec("acdc:fog_size=none:night:/data/acdc:val:mismatch=skip:fog_size=1x1")
    assert (acdc.condition, acdc.root, acdc.split) == ("night", "/data/acdc", "val")
    assert acdc.options == {"fog_size": "1x1", "mismatch": "skip"}  # the last value of a key given twice
    assert acdc.with_root("/d/acdc").text == "acdc:fog_size=none:night:/d/acdc:val:mismatch=skip:fog_size=1x1"
    path = parse_spec("folder:data/a=b:list.txt")  # '/' before '=': a path, not an option
    assert (path.root, path.split, path.options) == ("data/a=b", "list.txt", {})
    assert parse_spec("gta5:/g:").split is None  # an empty split is none, as the loaders read it
    bare = parse_spec("gta5")
    assert (bare.fields, bare.root, bare.with_root("/r").text) == ((), None, "gta5")
    # the datasets with a CONDITION field are those whose entries list conditions
    assert {n for n, e in datasets.dataset_entries().items() if e.conditions} == WITH_CONDITION
    with pytest.raises(TypeError, match="a dataset spec is a string"):
        parse_spec(None)
    fields = parse_fields(["night", "/a", "val", "fog_size=none"], "USAGE", True, ("fog_size", "mismatch"))
    assert (fields.condition, fields.root, fields.split) == ("night", Path("/a"), "val")
    assert fields.options == {"fog_size": "none"}
    with pytest.raises(ValueError, match=r"unknown option 'colour'; USAGE accepts: mismatch"):
        parse_fields(["/a", "colour=1"], "USAGE", False, ("mismatch",))
    with pytest.raises(ValueError, match=r"bad dataset spec fields '/a:val:extra'; expected USAGE \(a ':'"):
        parse_fields(["/a", "val", "extra"], "USAGE", False, ())
    for bad in ([""], ["night"]):
        with pytest.raises(ValueError, match="^the spec names no dataset folder: write it as USAGE$"):
            parse_fields(bad, "USAGE", bad == ["night"], ())
    escaped = parse_spec("folder:data/scans\\:2024:train")  # a ':' in a folder name
    assert escaped.root == "data/scans:2024" and escaped.split == "train"
    assert escaped.with_root("x:y").text == "folder:x\\:y:train"


def test_dataset_entries_are_built_by_keyword():
    with pytest.raises(TypeError):
        DatasetEntry(build_dataset, "usage", "layout")
    entry = DatasetEntry(build=build_dataset, usage="usage", layout="layout")
    assert (entry.usage, entry.scan, entry.options) == ("usage", None, ("mismatch",))
