"""Datasets by name: ``NAME[:CONDITION]:ROOT[:SPLIT][:KEY=VALUE...]`` specs, and the seeded training
wrapper.

Every dataset yields (image uint8 [3, H, W], label [H, W] of class indices with 255 = ignore; uint8 for the
benchmark datasets). The classes are those of a label set (``famix.data.label_sets``): a benchmark dataset's
trainIds are relabelled through its ``ids`` (the default set, the 19 trainIds, leaves them as they are);
``folder:`` datasets read their label files through it.
SPLIT is a split name (``train``, ``val``) or the path of a split-list file (containing ``/`` or
ending in ``.txt``; one image name per line); without SPLIT every image/label pair found is used,
sorted. ``KEY=VALUE`` fields are per-dataset options (``mismatch=skip|error|resize`` everywhere; see
each module).

Other packages add datasets through entry points: a :class:`~famix.data.entry.DatasetEntry` named in the
``famix.datasets`` group of their package metadata (``[project.entry-points."famix.datasets"]
NAME = "package.module:ENTRY"``) is found when a spec names it, with no import needed first; famix's own
miniature world comes in this way (``synthetic:*``). :func:`register_dataset` adds one in-process.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

import torch
from torch.utils.data import Dataset

from famix.data import acdc, bdd, cityscapes, folder, gta5, mapillary, synthia
from famix.data.entry import DatasetEntry
from famix.data.label_sets import LabelSet
from famix.data.specs import ALIASES, dataset_name, parse_spec

ENTRY_POINTS = "famix.datasets"  # the entry-point group of datasets from installed packages
# The benchmark loaders by spec name: each module's ENTRY (build, help text, and what it does on disk).
DATASETS: dict[str, DatasetEntry] = {
    m.ENTRY.source.name: m.ENTRY for m in (gta5, synthia, cityscapes, bdd, mapillary, acdc, folder)
}


def register_dataset(name: str, entry: DatasetEntry) -> None:
    """Make ``NAME:...`` specs build with ``entry`` (re-registering a name replaces it)."""
    DATASETS[name.lower()] = entry


def _load(point: EntryPoint) -> DatasetEntry:
    where = f"the {ENTRY_POINTS} entry point {point.name} = {point.value!r}"
    try:
        entry = point.load()
    except (ImportError, AttributeError) as e:
        raise ImportError(f"{where} cannot be loaded ({e}); reinstall the package that declares it") from e
    if not isinstance(entry, DatasetEntry):
        raise TypeError(f"{where} is a {type(entry).__name__}, not a famix.data.entry.DatasetEntry")
    return entry


def dataset_entry(name: str) -> DatasetEntry | None:
    """The entry of dataset ``name`` (aliases resolved), None if there is none: the table (famix's
    datasets, :func:`register_dataset`), then the ``famix.datasets`` entry points of installed packages
    (loaded on first use and kept in the table)."""
    name = dataset_name(name)
    if name not in DATASETS:
        point = next((p for p in entry_points(group=ENTRY_POINTS) if p.name.lower() == name), None)
        if point is not None:
            DATASETS[name] = _load(point)
    return DATASETS.get(name)


def _load_all() -> list[str]:
    """Load every installed entry point into the table; the errors of those that cannot be loaded."""
    errors = []
    for point in entry_points(group=ENTRY_POINTS):
        try:
            dataset_entry(point.name)
        except (ImportError, TypeError) as e:
            errors.append(str(e))
    return errors


def dataset_entries() -> dict[str, DatasetEntry]:
    """Every dataset name and its entry, the installed packages' entry points included (those that
    cannot be loaded left out; :func:`describe_datasets` names them)."""
    _load_all()
    return dict(DATASETS)


def build_dataset(spec: str, labels: LabelSet | None = None) -> Dataset:
    """Build a dataset from a spec such as ``cityscapes:/data/cityscapes:val``,
    ``acdc:night:/data/acdc:val``, ``gta5:/data/gta5:/lists/gtav_split_train.txt`` or
    ``folder:/data/mine:train``, whose labels are the classes of ``labels`` (None: the 19 trainIds)."""
    parsed = parse_spec(spec)
    entry, rest = dataset_entry(parsed.name), list(parsed.fields)
    if entry is None:
        known = ", ".join(dataset_entries())
        raise ValueError(
            f"unknown dataset {parsed.name!r} in {spec!r}: known datasets are {known} (`famix datasets` "
            "shows their specs and folder layouts; other packages add datasets as "
            f"{ENTRY_POINTS!r} entry points)"
        )
    if entry.takes_labels:
        dataset = entry.build(rest, labels)
    else:
        dataset = entry.build(rest)
        if labels is not None and not labels.is_identity():
            dataset = Relabelled(dataset, labels)
    dataset.spec = spec
    return dataset


class Relabelled(Dataset):
    """A dataset of trainIds seen through a label set: label value v becomes the class whose ``ids`` hold v
    (255 when none does). Other attributes are the base dataset's."""

    def __init__(self, base: Dataset, labels: LabelSet):
        self.base, self.labels = base, labels
        self.lut = torch.from_numpy(labels.id_lut())  # uint8 [>= 256]

    def __getattr__(self, name: str):
        if name in ("base", "labels", "lut"):  # not set yet (e.g. while unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.base, name)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.base[index]
        return image, self.lut[label.long().clamp(0, len(self.lut) - 1)]


def describe_datasets() -> str:
    """The dataset names, spec syntax and expected folder layouts (``famix datasets``)."""
    lines = [
        "Dataset specs: NAME[:CONDITION]:ROOT[:SPLIT][:KEY=VALUE...]",
        "  SPLIT: a split name, or a split-list path (containing / or ending in .txt), one name per line;",
        "  no SPLIT: every image/label pair found. KEY=VALUE: the options shown per dataset.",
    ]
    errors = _load_all()
    for name, entry in DATASETS.items():
        lines += ["", f"{name}:", *("  " + line for line in f"{entry.usage}\n{entry.layout}".splitlines())]
    lines += ["", "aliases: " + ", ".join(f"{a} = {n}" for a, n in ALIASES.items())]
    lines += [f"not available: {e}" for e in errors]
    return "\n".join(lines)


class SeededTransform(Dataset):
    """Training items: ``(index, seed)`` -> ``transform(image, label, torch.Generator().manual_seed(seed))``.

    The augmentation of an item is a function of (index, seed) alone (``engine.sampler`` pairs them), so it
    is reproducible across resumes, worker counts and ranks. With :func:`~famix.data.transforms.
    train_transform` an item is (uint8 crop [3, c, c], uint8 label [c, c], colour-jitter params [6]); the
    jitter and the normalisation run on the device (``transforms.color_jitter``, ``normalize``).
    """

    def __init__(self, base: Dataset, transform: Callable):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        index, seed = item
        image, label = self.base[index]
        return self.transform(image, label, torch.Generator().manual_seed(seed))
