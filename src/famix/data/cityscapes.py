"""Cityscapes: ``cityscapes:ROOT[:SPLIT][:mismatch=error]`` (SPLIT = train | val | test | a list file).

Labels are ``*_gtFine_labelIds.png`` (ids 0-33, mapped to trainIds); where only cityscapesScripts'
``*_gtFine_labelTrainIds.png`` exists for an image, that file is used as is.
"""

from __future__ import annotations

from pathlib import Path

from famix.data.entry import DatasetEntry
from famix.data.paired import PairedDataset, screen_sizes
from famix.data.scan import Scan, Source, collect, require_dir, scan_pairs
from famix.data.specs import parse_fields, parse_mismatch

LAYOUT = """  ROOT/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  ROOT/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    (or _gtFine_labelTrainIds.png from cityscapesScripts' createTrainIdLabelImgs)"""
SOURCE = Source(
    "cityscapes",
    LAYOUT,
    "https://www.cityscapes-dataset.com/downloads/ (leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip)",
)
USAGE = "cityscapes:ROOT[:SPLIT][:mismatch=error|skip|resize]"
SPLITS = ("train", "val")  # the labelled splits (test labels are placeholders)
ALL_SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = ("_leftImg8bit.png",)
LABEL_SUFFIXES = (("_gtFine_labelIds.png", "cityscapes"), ("_gtFine_labelTrainIds.png", "trainid"))


def scan(root: Path, split: str | None) -> Scan:
    """Pairs of one split folder, or of every labelled split present (``split=None``)."""
    if split is None:
        present = [s for s in SPLITS if (root / "leftImg8bit" / s).is_dir()]
        if not present:
            require_dir(root / "leftImg8bit" / "val", SOURCE, "images")
        return sum((scan(root, s) for s in present), Scan())
    if split not in ALL_SPLITS:
        raise ValueError(
            f"cityscapes split {split!r}: expected one of {', '.join(ALL_SPLITS)} or a list file"
        )
    images = require_dir(root / "leftImg8bit" / split, SOURCE, "images")
    labels = require_dir(root / "gtFine" / split, SOURCE, "labels")
    return scan_pairs(images, IMAGE_SUFFIXES, labels, LABEL_SUFFIXES, recursive=True)


def build(parts: list[str]) -> PairedDataset:
    """Build from the spec fields after ``cityscapes:``; evaluation is at full resolution."""
    f = parse_fields(parts, USAGE, with_condition=False, options=("mismatch",))
    mismatch = parse_mismatch(f.options.get("mismatch", "error"))
    pairs = collect(SOURCE, f.root, f.split, scan, IMAGE_SUFFIXES)
    kept, skipped = screen_sizes(pairs, mismatch, name="cityscapes")
    return PairedDataset("cityscapes", kept, mismatch, skipped=skipped)


ENTRY = DatasetEntry(
    build=build,
    usage=USAGE,
    layout=LAYOUT,
    source=SOURCE,
    scan=scan,
    splits=SPLITS,
    image_suffixes=IMAGE_SUFFIXES,
)
