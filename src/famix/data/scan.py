"""A dataset's files on disk: where it comes from (:class:`Source`, named in every error), folder checks,
image/label pairing (:class:`Pair`, :class:`Scan`, :func:`scan_pairs`), split lists, and the pairs of one
split (:func:`collect`). Dataset modules describe their layout; this module finds and pairs the files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from famix.data.errors import DatasetError, MissingDataError


@dataclass(frozen=True)
class Source:
    """What a dataset looks like on disk and where to get it (used in every error message)."""

    name: str
    layout: str
    url: str

    def hint(self) -> str:
        return f"expected layout ({self.name}):\n{self.layout}\nget it from: {self.url}"


@dataclass(frozen=True)
class Pair:
    """One image and its label; ``key`` is the name split lists refer to (e.g. ``00001``,
    ``frankfurt_000000_000294``); ``encoding`` names the label map (``trainids.ENCODINGS``)."""

    key: str
    image: Path
    label: Path
    encoding: str


@dataclass
class Scan:
    """Everything found for one split: pairs (sorted by image path) and the files left unpaired, each
    with the path its counterpart was expected at."""

    pairs: list[Pair] = field(default_factory=list)
    unpaired_images: list[tuple[Path, Path]] = field(default_factory=list)
    unpaired_labels: list[tuple[Path, Path]] = field(default_factory=list)

    def __add__(self, other: Scan) -> Scan:
        return Scan(
            sorted(self.pairs + other.pairs, key=lambda p: str(p.image)),
            self.unpaired_images + other.unpaired_images,
            self.unpaired_labels + other.unpaired_labels,
        )


def require_dir(path: Path, source: Source, what: str) -> Path:
    """Return ``path`` if it is a folder, else raise an error naming it, the layout and the download."""
    if not path.is_dir():
        raise MissingDataError(f"{source.name}: {what} folder not found: {path}\n{source.hint()}")
    return path


def _find(
    folder: Path, suffixes: tuple[str, ...], recursive: bool
) -> dict[tuple[str, str], tuple[Path, int]]:
    """{(sub-folder, key): (path, index of the matching suffix)}; earlier suffixes are preferred."""
    found: dict[tuple[str, str], tuple[Path, int]] = {}
    walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for dirpath, _, names in walk:
        rel = Path(dirpath).relative_to(folder).as_posix()
        for name in names:
            for i, suffix in enumerate(suffixes):
                if name.endswith(suffix) and len(name) > len(suffix) and not name.startswith("."):
                    slot = (rel, name[: -len(suffix)])
                    if slot not in found or found[slot][1] > i:
                        found[slot] = (Path(dirpath) / name, i)
                    break
    return found


def scan_pairs(
    image_dir: Path,
    image_suffixes: tuple[str, ...],
    label_dir: Path,
    label_suffixes: tuple[tuple[str, str], ...],
    recursive: bool = False,
) -> Scan:
    """Pair ``image_dir/[sub/]KEY<image suffix>`` with ``label_dir/[sub/]KEY<label suffix>``.

    ``label_suffixes`` are (suffix, encoding) in order of preference: Cityscapes prefers
    ``_gtFine_labelIds.png`` and falls back to ``_gtFine_labelTrainIds.png`` for the same key.
    Files matching no suffix (colour renderings, json, instance maps) are ignored.
    """
    images = _find(image_dir, image_suffixes, recursive)
    labels = _find(label_dir, tuple(s for s, _ in label_suffixes), recursive)
    scan = Scan()
    for slot, (image, _) in images.items():
        if slot in labels:
            label, i = labels[slot]
            scan.pairs.append(Pair(slot[1], image, label, label_suffixes[i][1]))
        else:
            scan.unpaired_images.append((image, label_dir / slot[0] / (slot[1] + label_suffixes[0][0])))
    for slot, (label, _) in labels.items():
        if slot not in images:
            scan.unpaired_labels.append((label, image_dir / slot[0] / (slot[1] + image_suffixes[0])))
    scan.pairs.sort(key=lambda p: str(p.image))
    scan.unpaired_images.sort()
    scan.unpaired_labels.sort()
    return scan


def unpaired_error(scan: Scan, source: Source) -> DatasetError | None:
    """An error naming the first unpaired files and the fix, or None when every file is paired."""
    lines = []
    for image, expected in scan.unpaired_images[:5]:
        lines.append(f"  image without label: {image} (expected {expected})")
    for label, expected in scan.unpaired_labels[:5]:
        lines.append(f"  label without image: {label} (expected {expected})")
    if not lines:
        return None
    n = len(scan.unpaired_images) + len(scan.unpaired_labels)
    return DatasetError(
        f"{source.name}: {n} unpaired file(s):\n"
        + "\n".join(lines)
        + "\nfix: download/extract the missing images or labels (a partial extraction is the usual cause), "
        "or delete the stray files, or pass a split list naming only complete pairs. "
        f"`famix datasets check {source.name} ROOT` lists them all.\n{source.hint()}"
    )


# ----------------------------------------------------------------------------- split lists


def is_list_file(split: str) -> bool:
    """A split given as a list-file path (containing a folder separator or ending in ``.txt``) rather
    than a split name such as ``val`` (a stray file called ``val`` in the working folder must not win)."""
    return "/" in split or "\\" in split or split.endswith(".txt")


def list_key(entry: str, image_suffixes: tuple[str, ...]) -> str:
    """The pair key of a split-list line: ``RGB/train/0000001.png`` -> ``0000001``,
    ``frankfurt/frankfurt_000000_000294_leftImg8bit.png`` -> ``frankfurt_000000_000294``."""
    name = os.path.basename(entry.split()[0].replace("\\", "/"))
    for suffix in image_suffixes:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    stem, ext = os.path.splitext(name)
    if ext.lower() in (".png", ".jpg", ".jpeg"):
        name = stem
    for suffix in image_suffixes:
        core = os.path.splitext(suffix)[0]
        if core and name.endswith(core):
            return name[: -len(core)]
    return name


def read_split_list(path: Path, source: Source) -> list[str]:
    """The non-empty, non-comment lines of a split-list file (one file name per line)."""
    if not path.is_file():
        raise MissingDataError(
            f"{source.name}: split list not found: {path}. A split list is a text file with one image "
            "file name per line (e.g. FAMix's datasets/gta5_list/gtav_split_train.txt); give its path, "
            "or omit the split to use every image/label pair found."
        )
    lines = path.read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


def select(scan: Scan, list_path: Path, source: Source, image_suffixes: tuple[str, ...]) -> list[Pair]:
    """The pairs named by a split list, in the list's order; names that are absent or unlabelled are
    an error naming them (the list promises those files exist)."""
    by_key = {}
    for pair in scan.pairs:
        by_key.setdefault(pair.key, pair)
    unlabelled = {}
    for image, expected in scan.unpaired_images:
        unlabelled.setdefault(list_key(image.name, image_suffixes), (image, expected))
    chosen, absent, no_label = [], [], []
    for entry in read_split_list(list_path, source):
        key = list_key(entry, image_suffixes)
        if key in by_key:
            chosen.append(by_key[key])
        elif key in unlabelled:
            no_label.append(unlabelled[key])
        else:
            absent.append(entry)
    if no_label:
        image, expected = no_label[0]
        raise DatasetError(
            f"{source.name}: split list {list_path} names {len(no_label)} image(s) without a label, "
            f"e.g. {image} (expected {expected}). Download/extract the labels or remove those lines."
        )
    if absent:
        raise DatasetError(
            f"{source.name}: split list {list_path} names {len(absent)} file(s) not found as image/label "
            f"pairs under the dataset root, e.g. {', '.join(absent[:5])}. Check that ROOT is right and the "
            f"download is complete, or remove those lines.\n{source.hint()}"
        )
    return chosen


def collect(
    source: Source, root: Path, split: str | None, scan, image_suffixes: tuple[str, ...]
) -> list[Pair]:
    """The pairs of a split: a folder split via ``scan(root, split)``, every pair (``split=None``), or
    the names of a split-list file (looked up among every pair found); unpaired files are an error."""
    require_dir(root, source, "dataset root")
    if split is not None and is_list_file(split):
        return select(scan(root, None), Path(split).expanduser(), source, image_suffixes)
    found = scan(root, split)
    error = unpaired_error(found, source)
    if error is not None:
        raise error
    if not found.pairs:
        raise MissingDataError(
            f"{source.name}: no image/label pairs found under {root} (split {split or 'all'}).\n"
            + source.hint()
        )
    return found.pairs
