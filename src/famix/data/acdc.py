"""ACDC: ``acdc:CONDITION:ROOT[:SPLIT][:fog_size=1080x1920|none][:mismatch=error|skip|resize]``.

CONDITION is fog, night, rain or snow; SPLIT train or val (test has no labels; the ``*ref``
reference images are never read). Labels are ``*_gt_labelIds.png`` mapped with the Cityscapes
table, or ``*_gt_labelTrainIds.png`` used as is when only that file exists. As in FAMix, fog keeps
only images of exactly 1920x1080 (``fog_size``, HxW; ``none`` keeps all); the rest are counted in
``dataset.skipped``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from famix.data.entry import DatasetEntry, SizeFilter
from famix.data.paired import PairedDataset, screen_sizes
from famix.data.scan import Scan, Source, collect, require_dir, scan_pairs
from famix.data.specs import parse_fields, parse_mismatch

LAYOUT = """  ROOT/rgb_anon/<cond>/{train,val}/<seq>/<frame>_rgb_anon.png
  ROOT/gt/<cond>/{train,val}/<seq>/<frame>_gt_labelIds.png   (or _gt_labelTrainIds.png)
  <cond> = fog | night | rain | snow"""
SOURCE = Source(
    "acdc", LAYOUT, "https://acdc.vision.ee.ethz.ch/download (rgb_anon_trainvaltest.zip, gt_trainval.zip)"
)
USAGE = "acdc:CONDITION:ROOT[:SPLIT][:fog_size=HxW|none][:mismatch=error|skip|resize]"
CONDITIONS = ("fog", "night", "rain", "snow")
SPLITS = ("train", "val")
IMAGE_SUFFIXES = ("_rgb_anon.png",)
LABEL_SUFFIXES = (("_gt_labelIds.png", "cityscapes"), ("_gt_labelTrainIds.png", "trainid"))
FOG_SIZE = (1080, 1920)  # (H, W): FAMix keeps only fog images of exactly this size
SIZE_FILTER = SizeFilter("fog_size", FOG_SIZE, conditions=("fog",))
OPTIONS = ("fog_size", "mismatch")


def scan(root: Path, split: str | None, condition: str) -> Scan:
    """Pairs of one condition and split, or of every labelled split present (``split=None``)."""
    if split is None:
        present = [s for s in SPLITS if (root / "rgb_anon" / condition / s).is_dir()]
        if not present:
            require_dir(root / "rgb_anon" / condition / "val", SOURCE, "images")
        return sum((scan(root, s, condition) for s in present), Scan())
    if split not in (*SPLITS, "test"):
        raise ValueError(f"acdc split {split!r}: expected train, val or a list file")
    images = require_dir(root / "rgb_anon" / condition / split, SOURCE, "images")
    labels = require_dir(root / "gt" / condition / split, SOURCE, "labels")
    return scan_pairs(images, IMAGE_SUFFIXES, labels, LABEL_SUFFIXES, recursive=True)


def check_condition(condition: str | None) -> str:
    if condition not in CONDITIONS:
        raise ValueError(
            f"acdc needs a condition: {USAGE} with CONDITION one of {', '.join(CONDITIONS)} "
            f"(got {condition!r}), e.g. acdc:night:/data/acdc:val"
        )
    return condition


def build(parts: list[str]) -> PairedDataset:
    """Build from the spec fields after ``acdc:``; evaluation is at full resolution."""
    f = parse_fields(parts, USAGE, with_condition=True, options=OPTIONS)
    condition = check_condition(f.condition)
    mismatch = parse_mismatch(f.options.get("mismatch", "error"))
    keep = SIZE_FILTER.keep_size(condition, f.options)
    pairs = collect(SOURCE, f.root, f.split, partial(scan, condition=condition), IMAGE_SUFFIXES)
    kept, skipped = screen_sizes(pairs, mismatch, keep, f"acdc:{condition}", SIZE_FILTER)
    return PairedDataset(f"acdc:{condition}", kept, mismatch, skipped=skipped)


ENTRY = DatasetEntry(
    build=build,
    usage=USAGE,
    layout=LAYOUT,
    source=SOURCE,
    scan=scan,
    splits=SPLITS,
    conditions=CONDITIONS,
    image_suffixes=IMAGE_SUFFIXES,
    options=OPTIONS,
    size_filter=SIZE_FILTER,
)
