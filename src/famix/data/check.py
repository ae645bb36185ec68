"""``famix datasets check NAME ROOT``: what is on disk, what is missing and what would break loading.

Per split: image/label/pair counts, unpaired files, unreadable files and size mismatches (from the
file headers, no decoding), and raw label values outside the dataset's known ids (decoding up to
``max_labels`` labels per split, spread evenly). ``exit_code`` is 0 when nothing is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from famix.data.datasets import ALIASES, MODULES
from famix.data.folder import DatasetError, MissingDataError, Scan, is_list_file, parse_fields, select
from famix.data.labels import ENCODINGS
from famix.data.readers import image_size, read_raw_label

SHOWN = 10  # file names listed per category in the report


def _units(
    name: str, module, root: Path, condition: str | None, split: str | None
) -> list[tuple[str, Callable]]:
    """(label, () -> Scan) for each split to check."""
    scan = partial(module.scan, condition=condition) if name == "acdc" else module.scan
    if split is not None and is_list_file(split):
        path = Path(split).expanduser()

        def from_list() -> Scan:
            return Scan(select(scan(root, None), path, module.SOURCE, module.IMAGE_SUFFIXES))

        return [(f"list {path.name}", from_list)]
    if split is not None:
        return [(split, partial(scan, root, split))]
    if name == "gta5" or (name == "synthia" and module.is_flat(root)):
        # No split folders: check every pair, then each split list found beside the data.
        units = [("all", partial(scan, root, None))]
        for s in ("train", "val"):
            path = module.find_list(root, s)
            if path is not None:
                units += _units(name, module, root, condition, str(path))
        return units
    return [(s, partial(scan, root, s)) for s in module.SPLITS]


def _check_unit(scan: Scan, fog_size, max_labels: int | None) -> dict:
    entry = {
        "pairs": len(scan.pairs),
        "images": len(scan.pairs) + len(scan.unpaired_images),
        "labels": len(scan.pairs) + len(scan.unpaired_labels),
        "unpaired_images": [f"{a} (expected label {b})" for a, b in scan.unpaired_images],
        "unpaired_labels": [f"{a} (expected image {b})" for a, b in scan.unpaired_labels],
        "size_mismatches": [],
        "unreadable": [],
        "filtered": 0,
        "labels_checked": 0,
        "unknown_label_values": {},
    }
    readable = []
    for pair in scan.pairs:
        try:
            image_wh, label_wh = image_size(pair.image), image_size(pair.label, "label")
        except DatasetError as err:
            entry["unreadable"].append(str(err).split(". ")[0])
            continue
        if fog_size is not None and image_wh != (fog_size[1], fog_size[0]):
            entry["filtered"] += 1  # FAMix's fog filter drops it; not a problem
        if image_wh != label_wh:
            sizes = "x".join(map(str, label_wh)), "x".join(map(str, image_wh))
            entry["size_mismatches"].append(f"{pair.label} is {sizes[0]}, its image {sizes[1]} (WxH)")
        else:
            readable.append(pair)
    sample = readable
    if max_labels is not None and len(readable) > max_labels:  # spread evenly over the split
        sample = [readable[i * len(readable) // max_labels] for i in range(max_labels)]
    for pair in sample:
        try:
            values = np.unique(read_raw_label(pair.label, pair.encoding))
        except DatasetError as err:
            entry["unreadable"].append(str(err).split(". ")[0])
            continue
        entry["labels_checked"] += 1
        for v in sorted(set(values.tolist()) - ENCODINGS[pair.encoding].known):
            first = {"files": 0, "example": str(pair.label), "encoding": pair.encoding}
            seen = entry["unknown_label_values"].setdefault(int(v), first)
            seen["files"] += 1
    return entry


def _problems(label: str, entry: dict, key: str, what: str) -> list[str]:
    items = entry[key]
    return [f"{label}: {len(items)} {what}, e.g. {items[0]}"] if items else []


def _resolve(name_or_spec: str, root) -> tuple[str, object, Path, str | None, str | None]:
    name, *rest = name_or_spec.split(":")
    name = ALIASES.get(name.lower(), name.lower())
    if name not in MODULES:
        raise ValueError(f"unknown dataset {name!r}; checkable datasets: {', '.join(MODULES)}")
    module = MODULES[name]
    if root is not None:  # NAME[:CONDITION] ROOT
        return name, module, Path(root).expanduser(), (rest[0] if rest else None), None
    options = ("mismatch", "size", "center_crop", "fog_size")
    f = parse_fields(rest, module.USAGE, with_condition=name == "acdc", options=options)
    return name, module, f.root, f.condition, f.split


def check_dataset(name_or_spec: str, root: str | Path | None = None, max_labels: int | None = 100) -> dict:
    """Check a dataset on disk: ``check_dataset("cityscapes", "/data/cityscapes")`` (every labelled
    split; for ACDC every condition unless ``"acdc:night"``) or ``check_dataset(SPEC)`` (that split).

    Returns {"dataset", "root", "splits": {label: counts and file lists}, "problems": [str],
    "warnings": [str], "ok": bool}.
    """
    name, module, root, condition, split = _resolve(name_or_spec, root)
    report = {"dataset": name, "root": str(root), "splits": {}, "problems": [], "warnings": []}
    problems, warnings = report["problems"], report["warnings"]
    if not root.is_dir():
        problems.append(f"dataset root not found: {root}\n{module.SOURCE.hint()}")
    conditions = [condition] if condition or name != "acdc" else list(module.CONDITIONS)
    if name == "acdc" and condition is not None and condition not in module.CONDITIONS:
        problems.append(
            f"unknown ACDC condition {condition!r}: expected one of {', '.join(module.CONDITIONS)}"
        )
        conditions = []
    mismatch_is_problem = getattr(module, "MISMATCH_DEFAULT", "error") != "skip"
    for cond in conditions if root.is_dir() else []:
        for label, thunk in _units(name, module, root, cond, split):
            label = f"{cond}/{label}" if name == "acdc" else label
            try:
                scan = thunk()
            except MissingDataError as err:
                report["splits"][label] = {"absent": True, "message": str(err).splitlines()[0]}
                continue
            except DatasetError as err:
                report["splits"][label] = {"error": str(err)}
                problems.append(f"{label}: {err}")
                continue
            fog = module.FOG_SIZE if name == "acdc" and cond == "fog" else None
            entry = report["splits"][label] = _check_unit(scan, fog, max_labels)
            problems += _problems(label, entry, "unpaired_images", "image(s) without a label")
            problems += _problems(label, entry, "unpaired_labels", "label(s) without an image")
            problems += _problems(label, entry, "unreadable", "unreadable file(s)")
            sizes = _problems(label, entry, "size_mismatches", "label(s) of another size than the image")
            if mismatch_is_problem:
                problems += sizes
            else:  # GTA5: the loader skips them by default, so they only warrant a warning
                warnings += [f"{w} (skipped when loading; mismatch=error to refuse)" for w in sizes]
            for v, seen in entry["unknown_label_values"].items():
                problems.append(
                    f"{label}: label value {v} is not a known id ({module.SOURCE.name} labels should hold "
                    f"{ENCODINGS[seen['encoding']].description}), in {seen['files']} checked file(s), "
                    f"e.g. {seen['example']}"
                )
            if not entry["pairs"] and not entry["unpaired_images"] and not entry["unpaired_labels"]:
                problems.append(f"{label}: no images or labels found")
    present = [s for s in report["splits"].values() if not s.get("absent")]
    if root.is_dir() and not present:
        absent = [s["message"] for s in report["splits"].values()]
        problems.append(
            "no split found: " + (absent[0] if absent else str(root)) + "\n" + module.SOURCE.hint()
        )
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
            f"  {label}: {s['pairs']} pairs ({s['images']} images, {s['labels']} labels), "
            f"{len(s['size_mismatches'])} size mismatches, {len(s['unreadable'])} unreadable, "
            f"{s['labels_checked']} labels value-checked"
            + (f", {s['filtered']} dropped by the fog size filter" if s["filtered"] else "")
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
