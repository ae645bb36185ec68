"""Dataset specs, ``NAME[:CONDITION]:ROOT[:SPLIT][:KEY=VALUE...]``, read in one place.

:func:`parse_spec` splits a spec into its name (lower-cased, aliases resolved) and the fields after it,
and its :class:`DatasetSpec` names the parts (condition, root, split, options) by the rule the loaders
use; :func:`parse_fields` is that rule with a loader's checks (its options, its usage in errors);
:func:`parse_size` and :func:`parse_mismatch` read the values of shared options. Nothing here imports
torch: the CLI, results tables and model cards read specs without a model library.

SPLIT is a split name (``train``, ``val``) or the path of a split-list file; ``KEY=VALUE`` fields are
options and may come anywhere after the name (a field whose part before ``=`` holds a ``/`` is a path).
Only the datasets in :data:`WITH_CONDITION` have a CONDITION field (their entries list the conditions).
A ``:`` inside a field (a folder named ``a:b``) is written ``\\:`` (``folder:data/a\\:b``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

ALIASES = {"bdd": "bdd100k", "gtav": "gta5"}  # another name -> the dataset's name
WITH_CONDITION = frozenset({"acdc"})  # the datasets whose first field is a CONDITION
MISMATCH_MODES = ("skip", "error", "resize")


def dataset_name(name: str) -> str:
    """A dataset name as the table knows it: lower-cased, an alias replaced by its dataset's name."""
    name = name.lower()
    return ALIASES.get(name, name)


def split_fields(spec: str) -> list[str]:
    """The ``:``-separated fields of a spec, a ``\\:`` kept as a ``:`` inside its field."""
    return [part.replace("\\:", ":") for part in re.split(r"(?<!\\):", spec)]


def join_fields(fields) -> str:
    """A spec from its fields (``:`` inside a field written ``\\:``): the inverse of :func:`split_fields`."""
    return ":".join(part.replace(":", "\\:") for part in fields)


def is_option(part: str) -> bool:
    """Whether a spec field is ``KEY=VALUE`` (an ``=`` with no ``/`` before it; ``data/a=b`` is a path)."""
    return "=" in part and "/" not in part.split("=", 1)[0]


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed spec: ``text`` as given, ``name`` (lower-cased, aliases resolved) and the ``fields`` after
    the name, as written. The parts are read as the loaders read them; a loader checks them when it builds
    (this reads any text, right or wrong)."""

    text: str
    name: str
    fields: tuple[str, ...]

    @property
    def written_name(self) -> str:
        """The name as the spec writes it (case and alias kept)."""
        return split_fields(self.text)[0]

    @property
    def options(self) -> dict[str, str]:
        """The ``KEY=VALUE`` fields (a key given twice: the last value)."""
        return dict(part.split("=", 1) for part in self.fields if is_option(part))

    def option(self, key: str) -> str | None:
        """The value of option ``key``, None when the spec does not set it."""
        return self.options.get(key)

    def _positional(self) -> list[int]:
        """The indices in ``fields`` of the fields that are not options: [CONDITION,] ROOT[, SPLIT]."""
        return [i for i, part in enumerate(self.fields) if not is_option(part)]

    def _field(self, n: int) -> int | None:
        """The index in ``fields`` of positional field ``n`` counted after the condition, if there is one."""
        positional = self._positional()[1 if self.name in WITH_CONDITION else 0 :]
        return positional[n] if n < len(positional) else None

    @property
    def condition(self) -> str | None:
        """The CONDITION of a dataset that has one (``acdc:night:ROOT`` -> ``night``), else None."""
        positional = self._positional()
        return self.fields[positional[0]] if self.name in WITH_CONDITION and positional else None

    @property
    def root(self) -> str | None:
        """The ROOT field as written (None when the spec has none)."""
        i = self._field(0)
        return None if i is None else self.fields[i]

    @property
    def split(self) -> str | None:
        """The SPLIT field as written: a split name or a split-list path; None when absent or empty."""
        i = self._field(1)
        return (self.fields[i] or None) if i is not None else None

    def with_root(self, root: str) -> DatasetSpec:
        """The same spec with its ROOT field replaced (a spec without one is returned as it is)."""
        i = self._field(0)
        if i is None:
            return self
        fields = (*self.fields[:i], root, *self.fields[i + 1 :])
        return dataclasses.replace(self, text=join_fields((self.written_name, *fields)), fields=fields)


def parse_spec(spec: str) -> DatasetSpec:
    """Split ``spec`` into its name (lower-cased, aliases resolved) and the fields after it."""
    if not isinstance(spec, str):
        raise TypeError(f"a dataset spec is a string NAME[:CONDITION]:ROOT[:SPLIT], not {spec!r}")
    name, *fields = split_fields(spec)
    return DatasetSpec(spec, dataset_name(name), tuple(fields))


@dataclass
class SpecFields:
    """The fields of ``NAME[:CONDITION]:ROOT[:SPLIT][:KEY=VALUE...]`` after the name."""

    root: Path
    split: str | None = None
    condition: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def parse_fields(parts: list[str], usage: str, with_condition: bool, options: tuple[str, ...]) -> SpecFields:
    """Split the spec fields after the name into condition, root, split and ``key=value`` options, as a
    loader whose spec is ``usage`` and whose options are ``options`` reads them."""
    opts, positional = {}, []
    for part in parts:
        if is_option(part):
            key, value = part.split("=", 1)
            if key not in options:
                raise ValueError(f"unknown option {key!r}; {usage} accepts: {', '.join(options) or 'none'}")
            opts[key] = value
        else:
            positional.append(part)
    condition = positional.pop(0) if with_condition and positional else None
    if not positional or not positional[0]:
        raise ValueError(f"the spec names no dataset folder: write it as {usage}")
    if len(positional) > 2:
        raise ValueError(
            f"bad dataset spec fields {join_fields(parts)!r}; expected {usage} (a ':' inside a folder "
            "name is written '\\:')"
        )
    split = positional[1] if len(positional) > 1 and positional[1] else None
    return SpecFields(Path(positional[0]).expanduser(), split, condition, opts)


def parse_size(value: str | None, option: str) -> tuple[int, int] | None:
    """``HxW`` (or one number N for NxN) -> (H, W); ``none``/``0``/``off`` -> None."""
    if value is None or value.lower() in ("none", "0", "off", ""):
        return None
    try:
        dims = [int(v) for v in value.lower().split("x")]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) <= 0:
        raise ValueError(f"option {option}={value!r}: expected HxW (e.g. 1046x1914), N, or none")
    return dims[0], dims[1]


def parse_mismatch(value: str) -> str:
    """The ``mismatch=`` option's value, checked."""
    if value not in MISMATCH_MODES:
        raise ValueError(f"option mismatch={value!r}: expected one of {', '.join(MISMATCH_MODES)}")
    return value
