"""Datasets by name: ``NAME[:CONDITION]:ROOT[:SPLIT][:KEY=VALUE...]`` specs, and the seeded training
wrapper.

Every dataset yields (image uint8 [3, H, W], label [H, W] of trainIds with 255 = ignore; uint8 for the
benchmark datasets).
SPLIT is a split name (``train``, ``val``) or the path of a split-list file (containing ``/`` or
ending in ``.txt``; one image name per line); without SPLIT every image/label pair found is used,
sorted. ``KEY=VALUE`` fields are per-dataset options (``mismatch=skip|error|resize`` everywhere; see
each module). Other packages add datasets with :func:`register_dataset` (the miniature world registers
``synthetic:*`` when ``famix.world`` is imported, as the ``famix`` command does).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from famix.data import acdc, bdd, cityscapes, gta5, mapillary, synthia
from famix.data.entry import DatasetEntry

ALIASES = {"bdd": "bdd100k", "gtav": "gta5"}
# The benchmark loaders by spec name: each module's ENTRY (build, help text, and what it does on disk).
DATASETS: dict[str, DatasetEntry] = {
    m.ENTRY.source.name: m.ENTRY for m in (gta5, synthia, cityscapes, bdd, mapillary, acdc)
}


def register_dataset(name: str, entry: DatasetEntry) -> None:
    """Make ``NAME:...`` specs build with ``entry`` (re-registering a name replaces it)."""
    DATASETS[name.lower()] = entry


def build_dataset(spec: str) -> Dataset:
    """Build a dataset from a spec such as ``cityscapes:/data/cityscapes:val``,
    ``acdc:night:/data/acdc:val`` or ``gta5:/data/gta5:/lists/gtav_split_train.txt``."""
    name, *rest = spec.split(":")
    name = ALIASES.get(name.lower(), name.lower())
    if name not in DATASETS:
        hint = " (synthetic:* specs exist once famix.world is imported)" if name == "synthetic" else ""
        raise ValueError(
            f"unknown dataset {name!r} in {spec!r}{hint}; known datasets:\n{describe_datasets()}"
        )
    dataset = DATASETS[name].build(rest)
    dataset.spec = spec
    return dataset


def describe_datasets() -> str:
    """The dataset names, spec syntax and expected folder layouts (``famix datasets``)."""
    lines = [
        "Dataset specs: NAME[:CONDITION]:ROOT[:SPLIT][:KEY=VALUE...]",
        "  SPLIT: a split name, or a split-list path (containing / or ending in .txt), one name per line;",
        "  no SPLIT: every image/label pair found. KEY=VALUE: the options shown per dataset.",
    ]
    for name, entry in DATASETS.items():
        lines += ["", f"{name}:", *("  " + line for line in f"{entry.usage}\n{entry.layout}".splitlines())]
    lines += ["", "aliases: " + ", ".join(f"{a} = {n}" for a, n in ALIASES.items())]
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
