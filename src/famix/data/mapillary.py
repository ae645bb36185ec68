"""Mapillary Vistas v1.2: ``mapillary:ROOT[:SPLIT][:size=1536|none][:mismatch=error|skip|resize]``.

SPLIT is ``train``/``training`` or ``val``/``validation`` (or a list file). Labels are v1.2 palette
PNGs (ids 0-65) mapped to trainIds with FAMix's table. Evaluation follows FAMix: resize to height
``size`` (image bicubic, label nearest), then centre crop/pad to ``size`` x ``size``; unlike FAMix
the label padding is 255 (ignore), not 0 (which maps to road).
"""

from __future__ import annotations

from pathlib import Path

from famix.data.entry import DatasetEntry
from famix.data.paired import PairedDataset, screen_sizes
from famix.data.scan import Scan, Source, collect, require_dir, scan_pairs
from famix.data.specs import parse_fields, parse_mismatch, parse_size
from famix.data.transforms import center_crop_pad, compose, resize_height

LAYOUT = """  ROOT/{training,validation}/images/<id>.jpg
  ROOT/{training,validation}/labels/<id>.png   (v1.2 8-bit palette PNG, ids 0-65)
    with the v2.0 zip, the v1.2 labels in {training,validation}/v1.2/labels/ are used"""
SOURCE = Source("mapillary", LAYOUT, "https://www.mapillary.com/dataset/vistas (Vistas v1.2 or v2.0)")
USAGE = "mapillary:ROOT[:SPLIT][:size=1536|none][:mismatch=error|skip|resize]"
SPLITS = ("training", "validation")
SPLIT_NAMES = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}
IMAGE_SUFFIXES = (".jpg",)
LABEL_SUFFIXES = ((".png", "mapillary"),)
EVAL_SIZE = 1536
OPTIONS = ("size", "mismatch")


def scan(root: Path, split: str | None) -> Scan:
    """Pairs of one split, or of every split present (``split=None``)."""
    if split is None:
        present = [s for s in SPLITS if (root / s / "images").is_dir()]
        if not present:
            require_dir(root / "validation" / "images", SOURCE, "images")
        return sum((scan(root, s) for s in present), Scan())
    if split not in SPLIT_NAMES:
        raise ValueError(
            f"mapillary split {split!r}: expected one of {', '.join(SPLIT_NAMES)} or a list file"
        )
    folder = root / SPLIT_NAMES[split]
    images = require_dir(folder / "images", SOURCE, "images")
    labels = folder / "labels"
    if not labels.is_dir() and (folder / "v1.2" / "labels").is_dir():
        labels = folder / "v1.2" / "labels"
    require_dir(labels, SOURCE, "labels")
    return scan_pairs(images, IMAGE_SUFFIXES, labels, LABEL_SUFFIXES)


def build(parts: list[str]) -> PairedDataset:
    """Build from the spec fields after ``mapillary:``."""
    f = parse_fields(parts, USAGE, with_condition=False, options=OPTIONS)
    mismatch = parse_mismatch(f.options.get("mismatch", "error"))
    size = parse_size(f.options.get("size", str(EVAL_SIZE)), "size")
    pairs = collect(SOURCE, f.root, f.split, scan, IMAGE_SUFFIXES)
    kept, skipped = screen_sizes(pairs, mismatch, name="mapillary")
    transform = compose(resize_height(size[0]), center_crop_pad(size)) if size else None
    return PairedDataset("mapillary", kept, mismatch, transform, skipped)


ENTRY = DatasetEntry(
    build=build,
    usage=USAGE,
    layout=LAYOUT,
    source=SOURCE,
    scan=scan,
    splits=SPLITS,
    image_suffixes=IMAGE_SUFFIXES,
    options=OPTIONS,
)
