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

import bisect
import warnings
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

import numpy as np
import torch
from torch.utils.data import Dataset

from famix.data import acdc, bdd, cityscapes, folder, gta5, mapillary, synthia
from famix.data.entry import DatasetEntry
from famix.data.folder import FolderDataset
from famix.data.label_sets import LabelSet
from famix.data.specs import ALIASES, dataset_name, parse_spec
from famix.data.trainids import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES

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
        if labels is not None and not keeps_trainids(labels):
            dataset = Relabelled(dataset, labels)
    dataset.spec = spec
    return dataset


def keeps_trainids(labels: LabelSet) -> bool:
    """Whether reading trainIds through ``labels`` changes nothing (trainId k is class k for all 19, 255 is
    ignore): only then may a dataset of trainIds skip relabelling. A set of fewer classes with ids 0..K-1 is
    not one: the trainIds it leaves out must become ignore, not class indices past its end."""
    lut = labels.id_lut()
    return bool((lut[:NUM_CLASSES] == np.arange(NUM_CLASSES)).all()) and lut[IGNORE_INDEX] == IGNORE_INDEX


def check_label_reading(spec: str, dataset: Dataset, labels: LabelSet | None, sample: int = 16) -> None:
    """Before any work: can ``dataset``'s labels map into ``labels`` (None: the 19 trainIds)?

    A dataset of trainIds (every benchmark loader): each class must claim a trainId (0-18), or it could never
    occur and would score 0 (refused, naming the classes and their ids); trainIds no class claims are read as
    ignore (a warning names them). A ``folder:`` dataset: up to ``sample`` label files, spread over it, are
    read; values no class claims are named with their pixel counts (a warning), and a sample in which no pixel
    belongs to any class is refused."""
    if labels is None:
        return
    entry = dataset_entry(parse_spec(spec).name)
    if entry is not None and not entry.takes_labels:
        never = [c for c in labels.classes if not any(0 <= i < NUM_CLASSES for i in c.ids)]
        if never:
            said = ", ".join(f"{c.name} (ids {', '.join(map(str, c.ids)) or 'none'})" for c in never)
            raise ValueError(
                f"the label set's classes {said} can never occur: this dataset's labels are the 19 "
                "Cityscapes trainIds (0-18), read through each class's ids. Give those classes trainIds as "
                "ids (read your own label values with a folder: dataset)"
            )
        unclaimed = [k for k in range(NUM_CLASSES) if k not in labels.claimed_ids()]
        if unclaimed:
            names = ", ".join(f"{k} {CLASS_NAMES[k]}" for k in unclaimed)
            warnings.warn(
                f"{spec}: the label set ({labels.describe()}) claims no class for trainIds {names}: their "
                "pixels are read as ignore (255)",
                stacklevel=2,
            )
        return
    if not isinstance(dataset, FolderDataset) or len(dataset.pairs) == 0:
        return
    picks = sorted({round(i * (len(dataset.pairs) - 1) / max(1, sample - 1)) for i in range(sample)})
    counts: dict = {}
    claimed = total = 0
    for i in picks:
        raw = dataset.layout.raw(dataset.pairs[i].label)
        off = dataset.layout.unclaimed(raw, labels)
        ours = dataset.layout.to_classes(raw, labels)
        claimed += int((ours != IGNORE_INDEX).sum())
        total += ours.size
        for value in dataset.layout.unknown(raw, labels):
            key = tuple(value) if isinstance(value, list | tuple) else value
            where = np.all(raw == np.asarray(value), axis=-1) if raw.ndim == 3 else raw == value
            counts[key] = counts.get(key, 0) + int((where & off).sum())
    if claimed == 0:
        raise ValueError(
            f"no pixel of {len(picks)} label files read (of {len(dataset.pairs)}) belongs to a class of "
            f"the label set ({labels.describe()}; expected {dataset.layout.expected(labels)}): pass the "
            "label set these labels were made with (model.classes / --classes), or check them with `famix "
            "datasets check`"
        )
    if counts:
        shown = ", ".join(f"{v}: {n} px" for v, n in sorted(counts.items(), key=lambda kv: -kv[1])[:8])
        warnings.warn(
            f"{spec}: {sum(counts.values())} of {total} pixels in {len(picks)} label files read hold values "
            f"no class of the label set claims ({shown}{', ...' if len(counts) > 8 else ''}): read as ignore "
            "(255)",
            stacklevel=2,
        )


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


class SeededSources(Dataset):
    """Several training sources (each a :class:`SeededTransform`, with its own transform) as one: item
    ``(index, seed)`` of their concatenation -> source k's item ``(index - start_k, seed)``, where start_k
    is the sum of the sizes of the sources before k (``engine.sampler.MixedStreamSampler`` draws them)."""

    def __init__(self, sources: list[Dataset]):
        self.sources = list(sources)
        self.starts = np.cumsum([0, *(len(s) for s in self.sources)]).tolist()  # [K + 1]

    def __len__(self) -> int:
        return self.starts[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """The (source, index in it) of an index of the concatenation."""
        if not 0 <= index < len(self):
            raise IndexError(
                f"index {index} out of range for {len(self)} images of {len(self.sources)} sources"
            )
        k = bisect.bisect_right(self.starts, index) - 1
        return k, index - self.starts[k]

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        index, seed = item
        k, i = self.locate(index)
        return self.sources[k][(i, seed)]
