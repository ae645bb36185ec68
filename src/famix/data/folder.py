"""Your own data: ``folder:ROOT[:SPLIT][:KEY=VALUE...]``, images and label PNGs paired by relative path and
stem, the labels read through the model's label set (``famix.data.label_sets``; the spec does not repeat it).

Options: ``images=SUBDIR`` and ``labels=SUBDIR`` (default ``images``, ``labels``), ``suffix=S`` (label stems
end in S, e.g. ``_gtFine_labelIds``), ``encoding=index|rgb`` (index: a grey/palette PNG's values are raw
ids, mapped through the classes' ``ids``; rgb: each pixel's colour is looked up among the classes'
``color``s), ``mismatch=error|skip|resize``. A value (or colour) no class claims becomes ignore (255) with a
warning naming the file, once per dataset and process; ``famix datasets check folder ROOT --classes FILE``
lists every such value before a run.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from famix.data.entry import DatasetEntry
from famix.data.errors import DatasetError
from famix.data.label_sets import LabelSet, from_names
from famix.data.paired import PairedDataset, screen_sizes
from famix.data.readers import _READ_ERRORS, _corrupt, read_color_label
from famix.data.scan import Pair, Scan, Source, collect, require_dir, scan_pairs
from famix.data.specs import parse_fields, parse_mismatch
from famix.data.trainids import CLASS_NAMES

LAYOUT = """  ROOT/images/[SPLIT/][sub-folders/]<stem>.png|jpg|jpeg|webp
  ROOT/labels/[SPLIT/][sub-folders/]<stem>[SUFFIX].png   (paired by relative path and stem)
    encoding=index (default): 8- or 16-bit grey/palette PNGs of raw ids, mapped by the classes' ids
    encoding=rgb: colour PNGs, each colour looked up among the classes' colors
  the classes: the model's label set (model.classes=FILE; without one, the 19 Cityscapes trainIds)"""
USAGE = (
    "folder:ROOT[:SPLIT][:images=images][:labels=labels][:suffix=][:encoding=index|rgb]"
    "[:mismatch=error|skip|resize]"
)
SOURCE = Source("folder", LAYOUT, "your own data: see the README's 'Your own data'")
OPTIONS = ("images", "labels", "suffix", "encoding", "mismatch")
ENCODINGS = ("index", "rgb")
IMAGE_SUFFIXES = tuple(s for e in (".png", ".jpg", ".jpeg", ".webp") for s in (e, e.upper()))
DEFAULT = from_names(CLASS_NAMES)  # the label set of a spec read without one


@dataclass(frozen=True)
class Layout:
    """Where a folder dataset's images and labels are and how its labels are coded (the spec's options)."""

    images: str = "images"
    labels: str = "labels"
    suffix: str = ""
    encoding: str = "index"

    @classmethod
    def of(cls, options: dict[str, str]) -> Layout:
        encoding = options.get("encoding", "index")
        if encoding not in ENCODINGS:
            raise ValueError(f"option encoding={encoding!r}: expected one of {', '.join(ENCODINGS)}")
        return cls(
            options.get("images", "images"),
            options.get("labels", "labels"),
            options.get("suffix", ""),
            encoding,
        )

    def scan(self, root: Path, split: str | None) -> Scan:
        """The pairs under ``ROOT/<images>/[SPLIT]`` and ``ROOT/<labels>/[SPLIT]``, at any depth."""
        images = require_dir(root / self.images / (split or ""), SOURCE, "images")
        labels = require_dir(root / self.labels / (split or ""), SOURCE, "labels")
        return scan_pairs(images, IMAGE_SUFFIXES, labels, ((self.suffix + ".png", self.encoding),), True)

    def raw(self, path: Path) -> np.ndarray:
        """A label file's raw ids [H, W] (index) or colours [H, W, 3] uint8 (rgb)."""
        if self.encoding == "rgb":
            return read_color_label(path)  # as stored: colours are looked up, never scaled or turned
        try:
            with Image.open(path) as im:
                if im.mode in ("RGB", "RGBA"):
                    raise DatasetError(
                        f"label {path} is a colour image (mode {im.mode}), but encoding=index reads raw ids "
                        "from grey or palette PNGs: pass the folder option encoding=rgb to look its colours "
                        "up among the label set's colors"
                    )
                return np.array(im)
        except DatasetError:
            raise
        except _READ_ERRORS as err:
            raise _corrupt(path, "label", err) from err

    def to_classes(self, raw: np.ndarray, labels: LabelSet) -> np.ndarray:
        return labels.map_colors(raw) if self.encoding == "rgb" else labels.map_ids(raw)

    def unclaimed(self, raw: np.ndarray, labels: LabelSet) -> np.ndarray:
        """bool [H, W]: the pixels of a label file whose id (or colour) no class claims (one table lookup)."""
        return labels.unclaimed_colors(raw) if self.encoding == "rgb" else labels.unclaimed_ids(raw)

    def unknown(self, raw: np.ndarray, labels: LabelSet) -> list:
        """The raw ids (or colours) of a label file that no class claims."""
        if self.encoding == "rgb":
            return labels.unknown_colors(raw)
        return sorted(set(np.unique(raw).tolist()) - labels.claimed_ids())

    def expected(self, labels: LabelSet) -> str:
        """What a label file should hold, for messages."""
        if self.encoding == "rgb":
            return f"the colors of the label set's {labels.describe()}"
        ids = sorted(labels.claimed_ids())
        shown = ", ".join(map(str, ids[:12])) + (", ..." if len(ids) > 12 else "")
        return f"the ids of the label set's {labels.describe()} or ignore_index: {shown}"


class FolderDataset(PairedDataset):
    """A ``folder:`` dataset: label files read through a label set (items as every dataset's)."""

    def __init__(self, pairs: list[Pair], layout: Layout, labels: LabelSet, mismatch: str, skipped=()):
        super().__init__("folder", pairs, mismatch, skipped=skipped)
        self.layout, self.labels, self.warned = layout, labels, False

    def read_label(self, pair: Pair) -> np.ndarray:
        raw = self.layout.raw(pair.label)
        if not self.warned and self.layout.unclaimed(raw, self.labels).any():
            unknown = self.layout.unknown(raw, self.labels)  # listed only for the warning
            if unknown:
                self.warned = True
                warnings.warn(
                    f"folder: label {pair.label} holds {len(unknown)} value(s) no class of the label set "
                    f"claims (e.g. {unknown[0]}; expected {self.layout.expected(self.labels)}): counted as "
                    "ignore (255). Add them to a class's ids (or colors), or run `famix datasets check "
                    "folder ROOT --classes FILE` to list every such value; this warning is shown once",
                    stacklevel=2,
                )
        return self.layout.to_classes(raw, self.labels)


def build(parts: list[str], labels: LabelSet | None = None) -> FolderDataset:
    """Build from the spec fields after ``folder:``; ``labels``: the model's label set (None: 19 trainIds)."""
    f = parse_fields(parts, USAGE, with_condition=False, options=OPTIONS)
    layout, labels = Layout.of(f.options), labels or DEFAULT
    if layout.encoding == "rgb":
        labels.check_colors(f"folder:{':'.join(parts)}")
    mismatch = parse_mismatch(f.options.get("mismatch", "error"))
    pairs = collect(SOURCE, f.root, f.split, layout.scan, IMAGE_SUFFIXES)
    kept, skipped = screen_sizes(pairs, mismatch, name="folder")
    return FolderDataset(kept, layout, labels, mismatch, skipped)


def configure(options: Mapping[str, str]) -> DatasetEntry:
    """The entry whose ``scan`` follows a spec's options (``famix datasets check`` scans with it)."""
    return replace(ENTRY, scan=Layout.of(dict(options)).scan)


def unknown_values(pair: Pair, options: Mapping[str, str], labels: LabelSet | None) -> tuple[list, str]:
    """(the values of ``pair``'s label file no class of ``labels`` claims, what the file should hold)."""
    layout, labels = Layout.of(dict(options)), labels or DEFAULT
    if layout.encoding == "rgb":
        labels.check_colors("folder: encoding=rgb")
    return layout.unknown(layout.raw(pair.label), labels), layout.expected(labels)


ENTRY = DatasetEntry(
    build=build,
    usage=USAGE,
    layout=LAYOUT,
    source=SOURCE,
    scan=Layout().scan,
    image_suffixes=IMAGE_SUFFIXES,
    options=OPTIONS,
    takes_labels=True,
    configure=configure,
    unknown_values=unknown_values,
)
