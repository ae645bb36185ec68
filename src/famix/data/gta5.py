"""GTA5: ``gta5:ROOT[:SPLIT][:mismatch=skip|error|resize][:center_crop=HxW|none]``.

GTA5 has no split folders. Without SPLIT every image/label pair is used; SPLIT may be a list file
or a name (``train``, ``val``) resolved to a list file inside ROOT (see ``LIST_CANDIDATES``).
Labels are palette PNGs whose index is the Cityscapes labelId. Some image/label pairs differ in
size; by default they are skipped and counted (RobustNet's rule). The ``val`` split is centre
cropped to 1046x1914 as the official evaluation does.
"""

from __future__ import annotations

from pathlib import Path

from famix.data.entry import DatasetEntry
from famix.data.errors import MissingDataError
from famix.data.paired import PairedDataset, screen_sizes
from famix.data.scan import Scan, Source, collect, is_list_file, require_dir, scan_pairs
from famix.data.specs import parse_fields, parse_mismatch, parse_size
from famix.data.transforms import center_crop_pad

LAYOUT = """  ROOT/images/NNNNN.png   (RGB, mostly 1914x1052)
  ROOT/labels/NNNNN.png   (8-bit palette PNG, index = Cityscapes labelId)
  optional split lists: ROOT/gtav_split_{train,val}.txt (FAMix's datasets/gta5_list/), one name per line"""
SOURCE = Source(
    "gta5",
    LAYOUT,
    "https://download.visinf.tu-darmstadt.de/data/from_games/ (all image and label parts, extracted "
    "into one images/ and one labels/ folder)",
)
USAGE = "gta5:ROOT[:SPLIT][:mismatch=skip|error|resize][:center_crop=HxW|none]"
IMAGE_SUFFIXES = (".png",)
LABEL_SUFFIXES = ((".png", "cityscapes"),)
LIST_CANDIDATES = ("gtav_split_{}.txt", "{}.txt", "splits/{}.txt", "gta5_list/gtav_split_{}.txt")
VAL_CROP = (1046, 1914)  # (H, W) of the official GTA5 validation centre crop
MISMATCH_DEFAULT = "skip"  # known bad pairs exist; the loader drops them (RobustNet rule)
SPLITS = ("train", "val")  # named by list files, not folders
OPTIONS = ("mismatch", "center_crop")


def scan(root: Path, split: str | None = None) -> Scan:
    """Every pair in ``images/`` and ``labels/`` (GTA5 has no split folders)."""
    images = require_dir(root / "images", SOURCE, "images")
    labels = require_dir(root / "labels", SOURCE, "labels")
    return scan_pairs(images, IMAGE_SUFFIXES, labels, LABEL_SUFFIXES)


def find_list(root: Path, split: str) -> Path | None:
    """The list file of a named split inside ROOT, if there is one."""
    return next((root / p.format(split) for p in LIST_CANDIDATES if (root / p.format(split)).is_file()), None)


def split_list(root: Path, split: str) -> Path:
    """The list file of a named split, looked up inside ROOT (an error says where to put it)."""
    path = find_list(root, split)
    if path is not None:
        return path
    tried = ", ".join(str(root / p.format(split)) for p in LIST_CANDIDATES)
    raise MissingDataError(
        f"gta5: split {split!r} needs a split-list file (GTA5 has no split folders); tried {tried}. "
        f"Copy FAMix's datasets/gta5_list/gtav_split_{split}.txt to {root}, pass the list's path as the "
        "split, or omit the split to use every pair."
    )


def build(parts: list[str]) -> PairedDataset:
    """Build from the spec fields after ``gta5:``."""
    f = parse_fields(parts, USAGE, with_condition=False, options=OPTIONS)
    mismatch = parse_mismatch(f.options.get("mismatch", MISMATCH_DEFAULT))
    split = f.split
    if split is not None and not is_list_file(split):
        split = str(split_list(f.root, split))
    # The official val transform centre-crops; a list file called *val* counts as the val split.
    is_val = f.split is not None and Path(f.split).stem.endswith("val")
    crop = parse_size(
        f.options.get("center_crop", "x".join(map(str, VAL_CROP)) if is_val else None), "center_crop"
    )
    pairs = collect(SOURCE, f.root, split, scan, IMAGE_SUFFIXES)
    kept, skipped = screen_sizes(pairs, mismatch, name="gta5")
    transform = center_crop_pad(crop) if crop else None
    return PairedDataset("gta5", kept, mismatch, transform, skipped)


ENTRY = DatasetEntry(
    build=build,
    usage=USAGE,
    layout=LAYOUT,
    source=SOURCE,
    scan=scan,
    splits=SPLITS,
    image_suffixes=IMAGE_SUFFIXES,
    options=OPTIONS,
    mismatch=MISMATCH_DEFAULT,
    split_list=split_list,
)
