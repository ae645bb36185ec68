"""SYNTHIA-RAND-CITYSCAPES: ``synthia:ROOT[:SPLIT][:mismatch=error|skip|resize]``.

Accepts the pre-split FAMix/RobustNet layout (``RGB/{train,val}``) and the flat release layout
(``RGB/*.png``, where a named split is looked up as ``ROOT/synthia_split_<split>.txt``).
Labels are 16-bit multi-channel PNGs with the class id in channel 0; they are decoded with
torchvision because PIL keeps only the high byte (every id 0-22 would silently become 0).
"""

from __future__ import annotations

from pathlib import Path

from famix.data.entry import DatasetEntry
from famix.data.errors import MissingDataError
from famix.data.paired import PairedDataset, screen_sizes
from famix.data.scan import Scan, Source, collect, is_list_file, require_dir, scan_pairs
from famix.data.specs import parse_fields, parse_mismatch

LAYOUT = """  ROOT/RGB/{train,val}/NNNNNNN.png          (7-digit names, RGB)
  ROOT/GT/LABELS/{train,val}/NNNNNNN.png    (16-bit PNG, channel 0 = SYNTHIA class id 0-22)
  or the release's flat RGB/*.png + GT/LABELS/*.png with split lists ROOT/synthia_split_{train,val}.txt"""
SOURCE = Source(
    "synthia",
    LAYOUT,
    "https://synthia-dataset.net/downloads/ (SYNTHIA-RAND-CITYSCAPES); RobustNet's split lists",
)
USAGE = "synthia:ROOT[:SPLIT][:mismatch=error|skip|resize]"
SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".png",)
LABEL_SUFFIXES = ((".png", "synthia"),)


def is_flat(root: Path) -> bool:
    rgb = root / "RGB"
    return rgb.is_dir() and any(p.suffix == ".png" for p in rgb.iterdir())


def scan(root: Path, split: str | None) -> Scan:
    """Pairs of one split folder; ``None``: the flat layout, or every split folder present."""
    if split is None:
        if is_flat(root):
            labels = require_dir(root / "GT" / "LABELS", SOURCE, "labels")
            return scan_pairs(root / "RGB", IMAGE_SUFFIXES, labels, LABEL_SUFFIXES)
        present = [s for s in SPLITS if (root / "RGB" / s).is_dir()]
        if not present:
            require_dir(root / "RGB" / "train", SOURCE, "images")
        return sum((scan(root, s) for s in present), Scan())
    images = require_dir(root / "RGB" / split, SOURCE, "images")
    labels = require_dir(root / "GT" / "LABELS" / split, SOURCE, "labels")
    return scan_pairs(images, IMAGE_SUFFIXES, labels, LABEL_SUFFIXES)


def find_list(root: Path, split: str) -> Path | None:
    """RobustNet's list file of a named split inside ROOT, if there is one."""
    path = root / f"synthia_split_{split}.txt"
    return path if path.is_file() else None


def split_list(root: Path, split: str) -> Path | None:
    """A named split of the flat layout -> its list file (None when the split is a folder)."""
    if (root / "RGB" / split).is_dir() or not is_flat(root):
        return None
    path = root / f"synthia_split_{split}.txt"
    if not path.is_file():
        raise MissingDataError(
            f"synthia: {root / 'RGB'} is not split into train/val folders, so split {split!r} needs the "
            f"list file {path} (RobustNet's synthia_split_{split}.txt); or pass a list path as the split."
        )
    return path


def build(parts: list[str]) -> PairedDataset:
    """Build from the spec fields after ``synthia:``; evaluation is at full resolution."""
    f = parse_fields(parts, USAGE, with_condition=False, options=("mismatch",))
    mismatch = parse_mismatch(f.options.get("mismatch", "error"))
    split = f.split
    if split is not None and not is_list_file(split):
        split = str(split_list(f.root, split) or split)
    pairs = collect(SOURCE, f.root, split, scan, IMAGE_SUFFIXES)
    kept, skipped = screen_sizes(pairs, mismatch, name="synthia")
    return PairedDataset("synthia", kept, mismatch, skipped=skipped)


ENTRY = DatasetEntry(
    build=build,
    usage=USAGE,
    layout=LAYOUT,
    source=SOURCE,
    scan=scan,
    splits=SPLITS,
    image_suffixes=IMAGE_SUFFIXES,
    split_list=split_list,
)
