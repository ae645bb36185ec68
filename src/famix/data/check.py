"""``famix datasets check NAME ROOT``: what is on disk, what is missing, and what the loader will do with it.

The check reads only the dataset's :class:`~famix.data.entry.DatasetEntry` (the records its loader uses)
and runs the loader's own steps on every split: the split lists, the pairing, the size screening (the
protocol's size filter, ``mismatch``), then it decodes the images and labels the loader keeps. Per split it
reports the pairs found and KEPT, unpaired and unreadable files, size mismatches, and raw label values
outside the dataset's known ids. A split the loader would keep nothing of is a problem, as is a named split
whose list file is missing. ``exit_code`` is 0 when nothing is wrong.

Every kept pair is decoded by default (a truncated file from a partial download fails a long run hours
in, and can be any file); ``decode=N`` decodes N pairs per split, spread evenly, for a quick look.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from famix.data.datasets import dataset_entries, dataset_entry
from famix.data.entry import DatasetEntry
from famix.data.errors import DatasetError, MissingDataError
from famix.data.label_sets import LabelSet
from famix.data.label_sets import load as load_label_set
from famix.data.paired import SKIPPED, nothing_left, screen_pairs
from famix.data.readers import read_image, read_raw_label
from famix.data.scan import Pair, Scan, is_list_file, select
from famix.data.specs import SpecFields, parse_fields, parse_mismatch, parse_spec
from famix.data.trainids import ENCODINGS
from famix.progress import progress_bar

SHOWN = 10  # file names listed per category in the report


def _missing(err: MissingDataError) -> Scan:
    raise err


Unit = tuple[str, Callable[[], Scan]]  # (label, () -> the Scan of that split)


def _units(entry: DatasetEntry, root: Path, condition: str | None, split: str | None) -> list[Unit]:
    """The splits to check, resolved as the loader resolves them: a list file, a named split (a folder, or
    a list file beside the data), or, without a split, every labelled split."""
    scan = partial(entry.find, condition=condition)

    def from_list(path: Path) -> Unit:
        return f"list {path.name}", lambda: Scan(
            select(scan(root, None), path, entry.source, entry.image_suffixes)
        )

    def named(s: str) -> tuple[Unit, bool]:
        """The unit of split ``s`` and whether a list file names it (rather than a folder)."""
        try:
            path = entry.split_list(root, s) if entry.split_list else None
        except MissingDataError as err:  # raised when the unit is checked: absent, or a problem if asked for
            return (s, partial(_missing, err)), True
        return (from_list(path), True) if path is not None else ((s, partial(scan, root, s)), False)

    if split is not None:
        return [from_list(Path(split).expanduser()) if is_list_file(split) else named(split)[0]]
    if not entry.splits:  # no named splits (folder:): every pair found
        return [("all", partial(scan, root, None))]
    units = [named(s) for s in entry.splits]
    everything = [("all", partial(scan, root, None))] if any(listed for _, listed in units) else []
    return everything + [unit for unit, _ in units]  # no split folders: every pair is a split too


def _decode(pair: Pair, unknown: Callable | None = None) -> tuple[tuple[list, str] | None, str | None]:
    """((the label's values no class claims, what it should hold), None), or (None, why the image or label
    cannot be read). ``unknown(pair)``: the dataset's own value check; None: its encoding's known ids."""
    try:
        read_image(pair.image)
        if unknown is not None:
            return unknown(pair), None
        values = set(np.unique(read_raw_label(pair.label, pair.encoding)).tolist())
        encoding = ENCODINGS[pair.encoding]
        return (sorted(values - encoding.known), encoding.description), None
    except DatasetError as err:
        return None, str(err).split(". ")[0]


def _check_unit(
    label: str,
    scan: Scan,
    entry: DatasetEntry,
    f: SpecFields,
    decode: int | None,
    progress: bool,
    labels: LabelSet | None = None,
) -> dict:
    mismatch = parse_mismatch(f.options.get("mismatch", entry.mismatch))
    keep = entry.size_filter.keep_size(f.condition, f.options) if entry.size_filter else None
    result = {
        "pairs": len(scan.pairs),
        "images": len(scan.pairs) + len(scan.unpaired_images),
        "labels": len(scan.pairs) + len(scan.unpaired_labels),
        "unpaired_images": [f"{a} (expected label {b})" for a, b in scan.unpaired_images],
        "unpaired_labels": [f"{a} (expected image {b})" for a, b in scan.unpaired_labels],
        "size_mismatches": [],  # refused (mismatch=error) or dropped (mismatch=skip) by the loader
        "unreadable": [],
        "filtered": 0,  # dropped by the protocol's size filter
        "dropped": [],  # (file, reason) for every pair the loader drops
        "kept": 0,
        "decoded": 0,
        "unknown_label_values": {},
    }
    kept = []
    for pair in scan.pairs:  # one at a time: an unreadable header is reported, not raised
        try:
            screened = screen_pairs([pair], mismatch, keep, entry.size_filter)
        except DatasetError as err:
            result["unreadable"].append(str(err).split(". ")[0])
            continue
        kept += screened.kept
        result["size_mismatches"] += screened.refused
        for file, why in screened.dropped:
            result["dropped"].append((str(file), why))
            if why.startswith(SKIPPED):
                result["size_mismatches"].append(why)
            else:
                result["filtered"] += 1
    refused = mismatch == "error" and bool(result["size_mismatches"])  # the loader refuses the whole split
    result["kept"], result["mismatch"] = 0 if refused else len(kept), mismatch
    sample = kept  # decoded even when refused: every problem is reported in one go
    if decode is not None and len(kept) > decode:  # spread evenly over the split
        sample = [kept[i * len(kept) // decode] for i in range(decode)]
    bar = progress_bar(total=len(sample), desc=f"check {label}", disable=not progress or not sample)
    unknown = (
        partial(entry.unknown_values, options=f.options, labels=labels) if entry.unknown_values else None
    )
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # the decoders release the GIL
        for pair, (found, error) in zip(
            sample, pool.map(partial(_decode, unknown=unknown), sample), strict=True
        ):
            bar.update()
            if error is not None:
                result["unreadable"].append(error)
                continue
            result["decoded"] += 1
            values, expected = found
            for v in values:
                first = {"files": 0, "example": str(pair.label), "expected": expected}
                key = v if isinstance(v, int) else "rgb" + str(tuple(v))
                result["unknown_label_values"].setdefault(key, first)["files"] += 1
    bar.close()
    return result


def _problems(label: str, entry: dict, key: str, what: str) -> list[str]:
    items = entry[key]
    return [f"{label}: {len(items)} {what}, e.g. {items[0]}"] if items else []


def _resolve(name_or_spec: str, root: str | Path | None) -> tuple[DatasetEntry, SpecFields]:
    spec = parse_spec(name_or_spec)
    name, rest = spec.written_name, list(spec.fields)
    entry = dataset_entry(spec.name)
    if entry is None or entry.scan is None:
        checkable = ", ".join(n for n, e in dataset_entries().items() if e.scan is not None)
        raise ValueError(
            f"{name!r} is not a dataset on disk famix can check; checkable datasets: {checkable}"
        )
    if root is None:  # one full spec: that split
        return entry, parse_fields(
            rest, entry.usage, with_condition=bool(entry.conditions), options=entry.options
        )
    # NAME[:CONDITION][:KEY=VALUE...] ROOT: every split
    positional = [p for p in rest if "=" not in p]
    if len(positional) > (1 if entry.conditions else 0):
        raise ValueError(
            f"famix datasets check {name_or_spec} {root}: give NAME"
            + ("[:CONDITION]" if entry.conditions else "")
            + f"[:KEY=VALUE...] and ROOT, or one full spec {entry.usage} alone"
        )
    with_condition = bool(entry.conditions and positional)
    return entry, parse_fields([*rest, str(root)], entry.usage, with_condition, options=entry.options)


def check_dataset(
    name_or_spec: str,
    root: str | Path | None = None,
    decode: int | None = None,
    progress: bool = True,
    classes: str | LabelSet | None = None,
) -> dict:
    """Check a dataset on disk as its loader will read it: ``check_dataset("cityscapes", "/data/cityscapes")``
    (every labelled split; every condition unless e.g. ``"acdc:night"``; options such as
    ``"acdc:fog:fog_size=none"``) or ``check_dataset(SPEC)`` (that split, with the spec's options).

    ``decode``: decode (and value-check) at most this many kept pairs per split, spread evenly; None: all.
    ``classes``: the label set (a file, a shipped name) a ``folder:`` dataset's labels are read through:
    values (or colours) that no class claims are problems (default: the 19 trainIds).
    Returns {"dataset", "root", "splits": {label: counts and file lists}, "problems": [str],
    "warnings": [str], "ok": bool}.
    """
    entry, f = _resolve(name_or_spec, root)
    labels = load_label_set(classes) if isinstance(classes, str | Path) else classes
    if entry.configure is not None:
        entry = entry.configure(f.options)
    source, root = entry.source, f.root
    report = {"dataset": source.name, "root": str(root), "splits": {}, "problems": [], "warnings": []}
    problems, warnings = report["problems"], report["warnings"]
    if not root.is_dir():
        problems.append(f"dataset root not found: {root}\n{source.hint()}")
    conditions = [f.condition] if f.condition or not entry.conditions else list(entry.conditions)
    if entry.conditions and f.condition is not None and f.condition not in entry.conditions:
        problems.append(
            f"unknown {source.name} condition {f.condition!r}: expected one of {', '.join(entry.conditions)}"
        )
        conditions = []
    for cond in conditions if root.is_dir() else []:
        unit_fields = SpecFields(root, f.split, cond, f.options)
        for label, thunk in _units(entry, root, cond, f.split):
            label = f"{cond}/{label}" if entry.conditions else label
            try:
                scan = thunk()
            except MissingDataError as err:
                report["splits"][label] = {"absent": True, "message": str(err).splitlines()[0]}
                if f.split is not None:  # the split asked for: the loader would fail
                    problems.append(f"{label}: {err}")
                continue
            except DatasetError as err:
                report["splits"][label] = {"error": str(err)}
                problems.append(f"{label}: {err}")
                continue
            result = report["splits"][label] = _check_unit(
                label, scan, entry, unit_fields, decode, progress, labels
            )
            problems += _problems(label, result, "unpaired_images", "image(s) without a label")
            problems += _problems(label, result, "unpaired_labels", "label(s) without an image")
            problems += _problems(label, result, "unreadable", "unreadable file(s)")
            sizes = _problems(label, result, "size_mismatches", "label(s) of another size than the image")
            if result["mismatch"] == "error":
                problems += sizes
            else:  # mismatch=skip (GTA5's default): the loader drops them, so they only warrant a warning
                warnings += [f"{w} (mismatch=error to refuse them)" for w in sizes]
            for v, seen in result["unknown_label_values"].items():
                what = f"colour {v[3:]}" if isinstance(v, str) else f"value {v}"
                problems.append(
                    f"{label}: label {what} is not a known id ({source.name} labels should hold "
                    f"{seen['expected']}), in {seen['files']} checked file(s), e.g. {seen['example']}"
                )
            if not result["pairs"] and not result["unpaired_images"] and not result["unpaired_labels"]:
                problems.append(f"{label}: no images or labels found")
            elif result["pairs"] and not result["kept"] and result["dropped"]:
                problems.append(nothing_left(label, result["dropped"]))
    present = [s for s in report["splits"].values() if not s.get("absent")]
    if root.is_dir() and not present and f.split is None:
        absent = [s["message"] for s in report["splits"].values()]
        problems.append("no split found: " + (absent[0] if absent else str(root)) + "\n" + source.hint())
    report["ok"] = not problems
    return report


def exit_code(report: dict) -> int:
    """0 when the dataset is usable as is, 1 when something must be fixed."""
    return 0 if report["ok"] else 1


def format_check(report: dict) -> str:
    """A human-readable report: one block per split, then problems and warnings."""
    lines = [f"{report['dataset']} at {report['root']}"]
    for label, s in report["splits"].items():
        if s.get("absent"):
            lines.append(f"  {label}: absent ({s['message']})")
            continue
        if "error" in s:
            lines.append(f"  {label}: ERROR {s['error']}")
            continue
        lines.append(
            f"  {label}: {s['kept']} of {s['pairs']} pairs kept "
            f"({s['images']} images, {s['labels']} labels), "
            f"{len(s['size_mismatches'])} size mismatches, {len(s['unreadable'])} unreadable, "
            f"{s['decoded']} pairs decoded"
            + (f", {s['filtered']} dropped by the size filter" if s["filtered"] else "")
        )
        for key in ("unpaired_images", "unpaired_labels", "size_mismatches", "unreadable"):
            for item in s[key][:SHOWN]:
                lines.append(f"    {key.replace('_', ' ')}: {item}")
            if len(s[key]) > SHOWN:
                lines.append(f"    ... and {len(s[key]) - SHOWN} more")
    lines += [f"PROBLEM: {p}" for p in report["problems"]]
    lines += [f"warning: {w}" for w in report["warnings"]]
    lines.append("OK" if report["ok"] else f"{len(report['problems'])} problem(s) found")
    return "\n".join(lines)
