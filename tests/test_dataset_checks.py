"""Dataset errors (each names the file and the fix), spec parsing, ``famix datasets check`` reports and
the per-source training transform wiring."""

import pytest
import torch

from famix.config import Config
from famix.data.check import check_dataset, exit_code, format_check
from famix.data.datasets import build_dataset, describe_datasets
from famix.engine.distributed import DistInfo
from famix.engine.train import make_train_loader
from tests import fake_datasets as fake


def test_missing_root_and_folders_name_path_layout_and_source(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(f"cityscapes:{tmp_path / 'nope'}:val")
    assert str(tmp_path / "nope") in str(err.value) and "leftImg8bit" in str(err.value)
    assert "cityscapes-dataset.com" in str(err.value)
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"labels folder not found: .*labels[\s\S]*download"):
        build_dataset(f"gta5:{tmp_path}")


def test_image_without_label_and_label_without_image(tmp_path):
    fake.gta5(tmp_path, 3)
    (tmp_path / "labels/00002.png").unlink()
    with pytest.raises(ValueError) as err:
        build_dataset(f"gta5:{tmp_path}")
    message = str(err.value)
    assert "image without label" in message and "images/00002.png" in message
    assert "labels/00002.png" in message and "fix:" in message
    fake.write_palette(tmp_path / "labels/00009.png", fake.raster([7]))
    (tmp_path / "labels/00002.png").write_bytes((tmp_path / "labels/00001.png").read_bytes())
    unpaired = r"label without image: .*labels/00009\.png \(expected .*images/00009"
    with pytest.raises(ValueError, match=unpaired):
        build_dataset(f"gta5:{tmp_path}")
    (tmp_path / "list.txt").write_text("00001.png\n")  # a split list needs only its own pairs
    assert len(build_dataset(f"gta5:{tmp_path}:{tmp_path / 'list.txt'}")) == 1


def test_label_of_another_size_and_corrupt_image(tmp_path):
    fake.cityscapes(tmp_path, {"val": {"lindau": 2}})
    label = tmp_path / "gtFine/val/lindau/lindau_000001_000019_gtFine_labelIds.png"
    fake.write_palette(label, fake.raster([7], h=8))
    with pytest.raises(ValueError, match=r"lindau_000001_000019_gtFine_labelIds\.png.*mismatch=skip"):
        build_dataset(f"cityscapes:{tmp_path}:val")
    with pytest.warns(UserWarning, match="skipped 1"):
        assert len(build_dataset(f"cityscapes:{tmp_path}:val:mismatch=skip")) == 1
    image = tmp_path / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png"
    image.write_bytes(b"not a png at all")
    corrupt = r"cannot read image .*lindau_000000_000019_leftImg8bit\.png.*re-download"
    with pytest.raises(ValueError, match=corrupt):
        build_dataset(f"cityscapes:{tmp_path}:val:mismatch=skip")


def test_colour_label_is_refused(tmp_path):
    fake.gta5(tmp_path, 1)
    from PIL import Image

    Image.open(tmp_path / "labels/00001.png").convert("RGB").save(tmp_path / "labels/00001.png")
    with pytest.raises(ValueError, match=r"00001\.png has PIL mode 'RGB'"):
        build_dataset(f"gta5:{tmp_path}")[0]


def test_split_list_errors_and_spec_parsing(tmp_path):
    fake.gta5(tmp_path, 2)
    (tmp_path / "list.txt").write_text("00001.png\n00007.png\n")
    with pytest.raises(ValueError, match=r"1 file\(s\) not found.*00007\.png"):
        build_dataset(f"gta5:{tmp_path}:{tmp_path / 'list.txt'}")
    with pytest.raises(FileNotFoundError, match="gtav_split_train.txt"):
        build_dataset(f"gta5:{tmp_path}:train")
    with pytest.raises(ValueError, match="unknown option 'colour'"):
        build_dataset(f"gta5:{tmp_path}::colour=1")
    with pytest.raises(ValueError, match="(?s)unknown dataset 'kitti'.*acdc:CONDITION:ROOT"):
        build_dataset("kitti:/data")
    synthetic = build_dataset("synthetic:fog:3:7:size=32")
    assert len(synthetic) == 3 and synthetic[0][0].shape == (3, 32, 32) and synthetic.seed == 7
    for bad, what in [
        ("synthetic:day:ten", "N .*'ten'"),
        ("synthetic:day:3:x", "SEED"),
        ("synthetic:day:size=b", "size"),
    ]:
        with pytest.raises(ValueError, match=what):
            build_dataset(bad)
    with pytest.raises(ValueError, match="unknown synthetic domain 'dusky'"):
        build_dataset("synthetic:dusky:3")
    listing = describe_datasets()
    assert "mapillary" in listing and "rgb_anon" in listing
    assert "synthetic:DOMAIN" in listing and all(
        d in listing for d in ("night", "fog", "snow", "rain", "sepia")
    )


def test_check_reports_counts_and_exit_codes(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    fake.cityscapes(good, {"train": {"aachen": 2}, "val": {"lindau": 1}})
    report = check_dataset("cityscapes", good)
    assert report["ok"] and exit_code(report) == 0, format_check(report)
    assert report["splits"]["train"]["pairs"] == 2 and report["splits"]["val"]["pairs"] == 1
    assert check_dataset(f"cityscapes:{good}:val")["splits"].keys() == {"val"}
    fake.cityscapes(bad, {"val": {"lindau": 3}})
    gt = bad / "gtFine/val/lindau"
    (gt / "lindau_000000_000019_gtFine_labelIds.png").unlink()
    fake.write_palette(gt / "lindau_000001_000019_gtFine_labelIds.png", fake.raster([7], h=4))
    fake.write_palette(gt / "lindau_000002_000019_gtFine_labelIds.png", fake.raster([7, 40]))
    report = check_dataset("cityscapes", bad)
    text = format_check(report)
    assert exit_code(report) == 1 and report["splits"]["train"]["absent"]
    val = report["splits"]["val"]
    assert (val["images"], val["labels"], val["pairs"]) == (3, 2, 2)
    assert "lindau_000000_000019_leftImg8bit.png" in text  # unpaired image
    assert "lindau_000001_000019_gtFine_labelIds.png" in text  # size mismatch
    assert 40 in val["unknown_label_values"] and "label value 40" in text
    missing = check_dataset("bdd100k", tmp_path / "nothing")
    assert exit_code(missing) == 1 and "nothing" in format_check(missing)


def test_check_gta5_mismatch_is_a_warning_and_acdc_conditions(tmp_path):
    fake.gta5(tmp_path / "gta5", 3, bad=(3,))
    (tmp_path / "gta5/gtav_split_val.txt").write_text("00001.png\n")
    report = check_dataset("gta5", tmp_path / "gta5")
    assert exit_code(report) == 0 and report["warnings"] and "00003.png" in report["warnings"][0]
    assert report["splits"]["all"]["pairs"] == 3 and report["splits"]["list gtav_split_val.txt"]["pairs"] == 1
    fake.acdc(tmp_path / "acdc", "night", "val", 2)
    fake.acdc(tmp_path / "acdc", "fog", "val", 2)
    report = check_dataset("acdc", tmp_path / "acdc")
    assert exit_code(report) == 0 and report["splits"]["night/val"]["pairs"] == 2
    assert report["splits"]["fog/val"]["filtered"] == 2 and report["splits"]["rain/val"]["absent"]
    assert list(check_dataset("acdc:night", tmp_path / "acdc")["splits"]) == ["night/train", "night/val"]


def test_train_loader_uses_the_synthia_recipe(tmp_path):
    fake.synthia(tmp_path, {"train": 2})
    cfg = Config()
    cfg.data.train, cfg.data.crop = f"synthia:{tmp_path}:train", 32
    cfg.data.batch_size, cfg.data.workers = 2, 0
    cfg.train.iterations = 1
    loader = make_train_loader(cfg, DistInfo(), 0)
    assert "synthia_transform" in loader.dataset.transform.__qualname__
    images, labels, jitter = next(iter(loader))  # what workers hand over: uint8, jitter runs on the device
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8 and labels.shape == (2, 32, 32)
    assert labels.dtype == torch.uint8 and jitter.shape == (2, 6)
