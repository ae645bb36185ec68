"""BDD100K semantic segmentation (10K): ``bdd100k:ROOT[:SPLIT][:mismatch=error|skip|resize]``.

Masks are already trainIds (0-18, 255 = ignore). Three layouts are recognised, per split:
FAMix's (``images/<split>``, ``labels/<split>``), the official download's
(``images/10k/<split>``, ``labels/sem_seg/masks/<split>``) and the old "seg" release
(``seg/images/<split>``, ``seg/labels/<split>/<id>_train_id.png``).
"""

from __future__ import annotations

from pathlib import Path

from famix.data.entry import DatasetEntry
from famix.data.paired import PairedDataset, screen_sizes
from famix.data.scan import Scan, Source, collect, require_dir, scan_pairs
from famix.data.specs import parse_fields, parse_mismatch

LAYOUT = """  ROOT/images/{train,val}/<id>.jpg + ROOT/labels/{train,val}/<id>.png                 (FAMix)
  or ROOT/images/10k/{train,val}/<id>.jpg + ROOT/labels/sem_seg/masks/{train,val}/<id>.png   (official)
  or ROOT/seg/images/{train,val}/<id>.jpg + ROOT/seg/labels/{train,val}/<id>_train_id.png    (old release)
  masks: 8-bit, trainIds 0-18, 255 = ignore (not colormaps/)"""
SOURCE = Source("bdd100k", LAYOUT, "https://bdd-data.berkeley.edu/ (10K Images + Segmentation labels)")
USAGE = "bdd100k:ROOT[:SPLIT][:mismatch=error|skip|resize]"
SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".jpg",)
# (images folder, labels folder, label suffix) with {} = split, in order of preference
LAYOUTS = (
    ("images/{}", "labels/{}", ".png"),
    ("images/10k/{}", "labels/sem_seg/masks/{}", ".png"),
    ("seg/images/{}", "seg/labels/{}", "_train_id.png"),
)


def _layout(root: Path, split: str) -> tuple[str, str, str] | None:
    return next((lay for lay in LAYOUTS if (root / lay[0].format(split)).is_dir()), None)


def scan(root: Path, split: str | None) -> Scan:
    """Pairs of one split, or of every split present (``split=None``)."""
    if split is None:
        present = [s for s in SPLITS if _layout(root, s) is not None]
        if not present:
            require_dir(root / "images" / "val", SOURCE, "images")
        return sum((scan(root, s) for s in present), Scan())
    layout = _layout(root, split)
    if layout is None:
        require_dir(root / "images" / split, SOURCE, "images")  # raises, naming the FAMix layout
    images_dir, labels_dir, suffix = layout
    images = root / images_dir.format(split)
    labels = require_dir(root / labels_dir.format(split), SOURCE, "labels")
    return scan_pairs(images, IMAGE_SUFFIXES, labels, ((suffix, "trainid"),))


def build(parts: list[str]) -> PairedDataset:
    """Build from the spec fields after ``bdd100k:``; evaluation is at full resolution."""
    f = parse_fields(parts, USAGE, with_condition=False, options=("mismatch",))
    mismatch = parse_mismatch(f.options.get("mismatch", "error"))
    pairs = collect(SOURCE, f.root, f.split, scan, IMAGE_SUFFIXES)
    kept, skipped = screen_sizes(pairs, mismatch, name="bdd100k")
    return PairedDataset("bdd100k", kept, mismatch, skipped=skipped)


ENTRY = DatasetEntry(
    build=build,
    usage=USAGE,
    layout=LAYOUT,
    source=SOURCE,
    scan=scan,
    splits=SPLITS,
    image_suffixes=IMAGE_SUFFIXES,
)
