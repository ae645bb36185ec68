"""Dataset errors (each names the file and the fix), spec parsing, ``famix datasets check`` reports and
the per-source training transform wiring."""

import pytest
import torch

from famix.config import Config
from famix.data.check import check_dataset, exit_code, format_check
from famix.data.datasets import DATASETS, build_dataset, describe_datasets
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
    with pytest.raises(ValueError, match="unknown dataset 'kitti'.*known datasets are gta5, .*acdc"):
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
    assert report["splits"]["all"]["kept"] == 2  # mismatch=skip, GTA5's default, drops the bad pair
    assert report["splits"]["train"]["absent"]  # no list: not asked for, so not a problem
    fake.acdc(tmp_path / "acdc", "night", "val", 2)
    fake.acdc(tmp_path / "acdc", "fog", "val", 2)
    report = check_dataset("acdc", tmp_path / "acdc")
    assert report["splits"]["night/val"]["kept"] == 2 and report["splits"]["rain/val"]["absent"]
    assert list(check_dataset("acdc:night", tmp_path / "acdc")["splits"]) == ["night/train", "night/val"]


def test_check_reports_a_split_the_size_filter_empties_as_a_problem(tmp_path):
    """FAMix's fog protocol keeps only 1920x1080 images: on other sizes the loader keeps nothing, and the
    check, like the loader's error, names the filter and the option that keeps them."""
    fake.acdc(tmp_path, "night", "val", 2)
    fake.acdc(tmp_path, "fog", "val", 2)
    report = check_dataset("acdc", tmp_path)
    fog = report["splits"]["fog/val"]
    assert exit_code(report) == 1 and (fog["pairs"], fog["kept"], fog["filtered"]) == (2, 0, 2)
    (problem,) = report["problems"]
    assert problem.startswith("fog/val: no image/label pairs left to load (2 dropped)")
    assert "fog_size=1080x1920" in problem and "pass fog_size=none" in problem
    assert "PROBLEM: fog/val" in format_check(report) and "0 of 2 pairs kept" in format_check(report)
    with pytest.raises(ValueError, match=r"left to load \(2 dropped\).*fog_size=1080x1920.*fog_size=none"):
        build_dataset(f"acdc:fog:{tmp_path}:val")
    for report in (
        check_dataset("acdc:fog:fog_size=none", tmp_path),
        check_dataset(f"acdc:fog:{tmp_path}:val:fog_size=none"),
    ):
        assert report["ok"] and report["splits"]["fog/val"]["kept"] == 2, format_check(report)
    assert len(build_dataset(f"acdc:fog:{tmp_path}:val:fog_size=none")) == 2


def test_check_runs_the_mismatch_mode_the_spec_asks_for(tmp_path):
    fake.gta5(tmp_path, 3, bad=(3,))
    refused = check_dataset(f"gta5:{tmp_path}:mismatch=error")
    assert exit_code(refused) == 1 and refused["splits"]["all"]["kept"] == 0
    assert "00003.png" in refused["problems"][0] and "mismatch=skip" in refused["problems"][0]
    resized = check_dataset(f"gta5:{tmp_path}:mismatch=resize")
    assert resized["ok"] and not resized["warnings"] and resized["splits"]["all"]["kept"] == 3


def test_check_a_named_gta5_split_without_its_list_is_a_problem(tmp_path):
    fake.gta5(tmp_path, 2)
    report = check_dataset(f"gta5:{tmp_path}:train")
    assert exit_code(report) == 1 and report["splits"]["train"]["absent"]
    (problem,) = report["problems"]
    assert problem.startswith("train: gta5: split 'train' needs a split-list file")
    assert str(tmp_path / "gtav_split_train.txt") in problem and f"to {tmp_path}" in problem
    (tmp_path / "gtav_split_train.txt").write_text("00002.png\n")
    report = check_dataset(f"gta5:{tmp_path}:train")
    assert report["ok"] and report["splits"]["list gtav_split_train.txt"]["kept"] == 1


def test_check_decodes_images_and_labels_so_truncated_files_are_unreadable(tmp_path):
    fake.cityscapes(tmp_path, {"val": {"lindau": 3}})
    image = tmp_path / "leftImg8bit/val/lindau/lindau_000001_000019_leftImg8bit.png"
    label = tmp_path / "gtFine/val/lindau/lindau_000002_000019_gtFine_labelIds.png"
    for path in (image, label):  # the header (and size) survive, the pixels do not
        path.write_bytes(path.read_bytes()[:-40])
    report = check_dataset("cityscapes", tmp_path)
    val = report["splits"]["val"]
    assert exit_code(report) == 1 and val["kept"] == 3 and val["decoded"] == 1
    assert any("cannot read image" in u and image.name in u for u in val["unreadable"])
    assert any("cannot read label" in u and label.name in u for u in val["unreadable"])
    assert "val: 2 unreadable file(s)" in report["problems"][0]
    quick = check_dataset("cityscapes", tmp_path, decode=1)  # one pair, from the start of the split
    assert quick["ok"] and quick["splits"]["val"]["decoded"] == 1


def test_check_reads_only_the_dataset_entry(tmp_path, monkeypatch):
    """A dataset registered under another name with ACDC's entry is checked the same way (conditions,
    size filter): the check keys nothing on dataset names."""
    monkeypatch.setitem(DATASETS, "weather", DATASETS["acdc"])
    fake.acdc(tmp_path, "fog", "val", 1)
    report = check_dataset("weather:fog", tmp_path)
    assert list(report["splits"]) == ["fog/train", "fog/val"] and report["splits"]["fog/val"]["filtered"] == 1
    assert "fog_size=none" in report["problems"][0]
    with pytest.raises(ValueError, match="not a dataset on disk.*checkable datasets: gta5"):
        check_dataset("synthetic:day")


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
