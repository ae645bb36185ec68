"""One record per dataset name: how a spec builds it, its help text and, for datasets on disk, what the
loader does with the files (where the splits are, which pairs it keeps). ``famix datasets check`` reads
only this record, so what it reports is what the loader will do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from famix.data.scan import Scan, Source
from famix.data.specs import parse_size


@dataclass(frozen=True)
class SizeFilter:
    """A protocol's image-size filter: only images of exactly ``size`` (H, W) are kept, for the
    ``conditions`` listed (every condition when empty); the spec option ``option`` (``HxW`` or ``none``)
    overrides it (FAMix's ACDC fog protocol keeps only the 1920x1080 fog images)."""

    option: str
    size: tuple[int, int]
    conditions: tuple[str, ...] = ()

    def keep_size(self, condition: str | None, options: Mapping[str, str]) -> tuple[int, int] | None:
        """The (H, W) images must have for ``condition`` under the spec ``options``; None: any size."""
        keep = parse_size(options.get(self.option, "x".join(map(str, self.size))), self.option)
        return keep if not self.conditions or condition in self.conditions else None

    def reason(self, image_wh: tuple[int, int], keep: tuple[int, int]) -> str:
        """Why an image of ``image_wh`` (W, H) is dropped, with the option that keeps it."""
        return (
            f"the size filter {self.option}={keep[0]}x{keep[1]} (HxW) drops images of other sizes (this one "
            f"is {image_wh[1]}x{image_wh[0]}); pass {self.option}=none to keep every size"
        )


@dataclass(frozen=True, kw_only=True)
class DatasetEntry:
    """One name in the dataset table, built by keyword (``DatasetEntry(build=..., usage=..., layout=...)``).

    ``build(fields after the name)`` -> a dataset; ``usage`` and ``layout`` are its help text. The other
    fields describe a dataset on disk (``scan`` is None for one that is not, e.g. ``synthetic:``), each the
    same object its loader uses:

    - ``source``: name, layout and download (every error names them); ``image_suffixes``: how split-list
      lines name images;
    - ``scan(root, split[, condition])``: the pairs and unpaired files of a split (``None``: all splits);
      ``condition`` is passed only when ``conditions`` is not empty (ACDC's fog, night, rain, snow);
    - ``splits``: the labelled splits checked when none is given;
    - ``split_list(root, split)``: for datasets without split folders (GTA5, flat SYNTHIA), the list file of
      a named split (a ``MissingDataError`` naming where it is expected when absent), None where the split
      is a folder; the field itself is None when every split is a folder;
    - ``options``: the spec's ``KEY=VALUE`` options; ``mismatch``: the loader's mismatch mode when the spec
      sets none; ``size_filter``: the protocol's size filter, if any;
    - ``takes_labels``: ``build(fields, label_set)`` reads its label files through the label set itself
      (``folder:``); other datasets yield trainIds, relabelled afterwards. Such a dataset also gives
      ``configure(options)``, the entry whose ``scan`` follows a spec's options, and
      ``unknown_values(pair, options, label_set)``: (the label file's values no class claims, what it
      should hold), which ``famix datasets check`` reports.
    """

    build: Callable[[list[str]], Dataset]
    usage: str
    layout: str
    source: Source | None = None
    scan: Callable[..., Scan] | None = None
    splits: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ()
    image_suffixes: tuple[str, ...] = ()
    options: tuple[str, ...] = ("mismatch",)
    mismatch: str = "error"
    size_filter: SizeFilter | None = None
    split_list: Callable[[Path, str], Path | None] | None = None
    takes_labels: bool = False
    configure: Callable[[Mapping[str, str]], DatasetEntry] | None = None
    unknown_values: Callable[..., tuple[list, str]] | None = None

    def find(self, root: Path, split: str | None, condition: str | None = None) -> Scan:
        """``scan`` for one split (and condition, where the dataset has them)."""
        if self.scan is None:
            raise ValueError(f"{self.usage}: not a dataset on disk, nothing to scan")
        return self.scan(root, split, condition) if self.conditions else self.scan(root, split)
