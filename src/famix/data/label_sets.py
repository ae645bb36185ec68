"""Label sets: the classes a model predicts, and how a dataset's label values become them.

A label set is a YAML file (or the same mapping inline in a config, ``model.classes``)::

    ignore_index: 255              # raw label value that is ignored (default 255)
    ignore_color: [0, 0, 0]        # encoding=rgb only: a colour that is ignored (default: none)
    classes:
      - {name: road, color: [128, 64, 128]}                                           # class 0
      - {name: vehicle, color: [0, 0, 142], ids: [26, 27, 28], prompt: "car or truck"}  # class 1

``name`` (required, unique), ``color`` (for colour outputs and ``encoding=rgb`` labels; a default palette
otherwise), ``ids`` (the raw label values that map to the class; default: the class's own index; unique
across classes), ``prompt`` (the words mining prompts use instead of the name; default: the name). Raw ids
are what a dataset yields: the values of a ``folder:`` dataset's label PNGs, and the 19 Cityscapes trainIds
for the benchmark datasets (so ``ids: [13, 14, 15]`` merges car, truck and bus). A class index is a label
value below 255; 255 stays famix's ignore value inside, whatever ``ignore_index`` the files use.

Without ``model.classes`` a model's label set is :func:`from_names` of its class names: the 19 Cityscapes
trainIds (ids = index, Cityscapes colours), which maps every benchmark dataset to itself.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import yaml

from famix.data.trainids import CLASS_NAMES, IGNORE_INDEX, palette

MAX_CLASSES = 255  # class indices are label values 0-254; 255 is ignore
MAX_ID = 65535  # raw ids: up to 16-bit label PNGs
CLASS_KEYS = ("name", "color", "ids", "prompt")
TOP_KEYS = ("ignore_index", "ignore_color", "classes")


class LabelSetError(ValueError):
    """A label set file (or mapping) that cannot be used; the message names it and what to fix."""


@dataclass(frozen=True)
class LabelClass:
    """One class: its name, colour (None: the default palette's), raw ids and prompt words."""

    name: str
    color: tuple[int, int, int] | None
    ids: tuple[int, ...]
    prompt: str


@dataclass(frozen=True)
class LabelSet:
    """The classes of a model, in class-index order, and the raw value its label files ignore."""

    classes: tuple[LabelClass, ...]
    ignore_index: int = IGNORE_INDEX
    ignore_color: tuple[int, int, int] | None = None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def prompts(self) -> list[str]:
        """The words of each class in mining prompts ("<style> <prompt>")."""
        return [c.prompt for c in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        """The label set as plain YAML/JSON data (what checkpoints, banks and result files store)."""
        out: dict = {"ignore_index": self.ignore_index}
        if self.ignore_color is not None:
            out["ignore_color"] = list(self.ignore_color)
        out["classes"] = [
            {
                "name": c.name,
                **({"color": list(c.color)} if c.color is not None else {}),
                "ids": list(c.ids),
                "prompt": c.prompt,
            }
            for c in self.classes
        ]
        return out

    def same_classes(self, other: LabelSet) -> bool:
        """Whether two sets define the same classes (names, ids, prompts, ignore): colours aside."""

        def key(ls: LabelSet):
            return ls.ignore_index, [(c.name, c.ids, c.prompt) for c in ls.classes]

        return key(self) == key(other)

    def describe(self) -> str:
        """``5 classes (flat, construction, ...)`` for messages."""
        names = ", ".join(self.names[:8]) + (", ..." if len(self) > 8 else "")
        return f"{len(self)} classes ({names})"

    def colors(self) -> np.ndarray:
        """[K, 3] uint8: each class's colour; classes without one take the first free default colour."""
        given = {c.color for c in self.classes if c.color is not None}
        spare = (tuple(int(v) for v in rgb) for rgb in _default_palette() if tuple(rgb) not in given)
        return np.array([c.color if c.color is not None else next(spare) for c in self.classes], np.uint8)

    def palette(self) -> np.ndarray:
        """[256, 3] uint8 colour table indexed by class index (ignore and unused entries black)."""
        table = np.zeros((256, 3), np.uint8)
        table[: len(self)] = self.colors()
        return table

    def id_lut(self) -> np.ndarray:
        """uint8 [max(256, largest id + 2)]: raw id -> class index, 255 for ignore and unclaimed ids; the last
        entry is unclaimed, so ids beyond the table may be clamped to it. Built once per label set."""
        return self._luts[0]

    @cached_property
    def _luts(self) -> tuple[np.ndarray, np.ndarray]:
        # (id -> class index, id -> claimed by a class or ignore_index), both of the same length
        largest = max([self.ignore_index, *(i for c in self.classes for i in c.ids)])
        lut = np.full(max(256, largest + 2), IGNORE_INDEX, np.uint8)
        for k, c in enumerate(self.classes):
            lut[list(c.ids)] = k
        lut[self.ignore_index] = IGNORE_INDEX
        claimed = np.zeros(len(lut), bool)
        claimed[list(self.claimed_ids())] = True
        return lut, claimed

    def claimed_ids(self) -> frozenset[int]:
        """The raw ids a label file may hold: every class's ids and ``ignore_index``."""
        return frozenset([self.ignore_index, *(i for c in self.classes for i in c.ids)])

    def is_identity(self) -> bool:
        """Whether the set maps raw id k to class k for every class and nothing else (a benchmark dataset's
        trainIds then need no relabelling)."""
        return self.ignore_index == IGNORE_INDEX and all(c.ids == (k,) for k, c in enumerate(self.classes))

    def map_ids(self, raw: np.ndarray) -> np.ndarray:
        """Raw ids [H, W] (any integer dtype) -> class indices uint8 [H, W] (255: ignore or unclaimed)."""
        return self.id_lut()[self._index(raw)]

    def unclaimed_ids(self, raw: np.ndarray) -> np.ndarray:
        """bool [H, W]: the pixels of raw ids [H, W] that neither a class nor ``ignore_index`` claims."""
        return ~self._luts[1][self._index(raw)]

    def _index(self, raw: np.ndarray) -> np.ndarray:
        # raw ids as indices into the tables; ids beyond them clamp onto the last, unclaimed entry
        return raw if raw.dtype == np.uint8 else np.minimum(raw, len(self.id_lut()) - 1).astype(np.intp)

    def map_colors(self, rgb: np.ndarray) -> np.ndarray:
        """Colour labels [H, W, 3] uint8 -> class indices uint8 [H, W] (255: ``ignore_color`` or a colour
        no class has). Needs every class's colour (``check_colors``)."""
        return self._find_colors(rgb)[0]

    def unclaimed_colors(self, rgb: np.ndarray) -> np.ndarray:
        """bool [H, W]: the pixels of colour labels [H, W, 3] whose colour neither a class nor
        ``ignore_color`` has."""
        classes, code = self._find_colors(rgb)
        ignored = code == _rgb_code(np.array(self.ignore_color, np.uint8)) if self.ignore_color else False
        return (classes == IGNORE_INDEX) & ~ignored

    def _find_colors(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # (class indices [H, W], 255 where no class has the colour; the colour codes [H, W])
        code = _rgb_code(rgb)  # [H, W]
        keys = _rgb_code(np.array([c.color for c in self.classes], np.uint8)[None])[0]  # [K]
        order = np.argsort(keys)
        at = np.clip(np.searchsorted(keys[order], code), 0, len(keys) - 1)
        found = keys[order][at] == code
        return np.where(found, order[at], IGNORE_INDEX).astype(np.uint8), code

    def unknown_colors(self, rgb: np.ndarray) -> list[tuple[int, int, int]]:
        """The colours of ``rgb`` [H, W, 3] that no class has (``ignore_color`` excepted)."""
        known = {c.color for c in self.classes} | {self.ignore_color}
        codes = np.unique(_rgb_code(rgb))
        colours = [(int(v >> 16), int(v >> 8 & 255), int(v & 255)) for v in codes]
        return [c for c in colours if c not in known]

    def check_colors(self, where: str) -> None:
        """Refuse a set with a class without a colour (``encoding=rgb`` labels need them all)."""
        missing = [c.name for c in self.classes if c.color is None]
        if missing:
            raise LabelSetError(
                f"{where}: encoding=rgb reads each label pixel's colour, but class(es) {', '.join(missing)} "
                "of the label set have no color: give every class a color: [R, G, B]"
            )

    def group_lut(self, num_classes: int, where: str = "--group"):
        """long [num_classes]: each class of a model with ``num_classes`` classes -> the class (group) of
        this set whose ``ids`` name it. Refuses ids that are no class of the model, and model classes that
        no group claims. (torch is imported here: reading a config imports no model library.)"""
        import torch

        lut = torch.full((num_classes,), -1, dtype=torch.long)
        for g, c in enumerate(self.classes):
            outside = [i for i in c.ids if i >= num_classes]
            if outside:
                raise LabelSetError(
                    f"{where}: class {c.name!r} groups ids {outside}, but the model has {num_classes} "
                    f"classes (0-{num_classes - 1}): a grouping's ids are the model's class indices"
                )
            lut[list(c.ids)] = g
        free = (lut < 0).nonzero().flatten().tolist()
        if free:
            raise LabelSetError(
                f"{where}: the model's class(es) {free} are in no group's ids: every class of the model must "
                "be in one group (add a group for them)"
            )
        return lut


def _rgb_code(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]


def _default_palette() -> np.ndarray:
    """[255, 3] distinct colours for classes without one: the PASCAL VOC bit-interleaved palette, black
    (the usual void colour) left out."""
    out = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for bit in range(8):
            r |= (c & 1) << (7 - bit)
            g |= (c >> 1 & 1) << (7 - bit)
            b |= (c >> 2 & 1) << (7 - bit)
            c >>= 3
        out[i] = (r, g, b)
    return out[1:]


def model_labels(classes: dict | None, class_names, num_classes: int) -> LabelSet:
    """The one label set a model predicts, from the three fields a model config stores (its serialised form,
    kept as they are in checkpoints and run records): ``classes`` (a label set's content) or, without one,
    the label set of ``class_names``. The three must agree: a disagreement is refused here, the one place
    that checks it. Parsed once per content (label sets are immutable, so callers share it)."""
    key = json.dumps(classes, sort_keys=True) if classes is not None else None
    return _model_labels(key, tuple(class_names), num_classes)


@functools.lru_cache(maxsize=32)
def _model_labels(classes: str | None, names: tuple[str, ...], num_classes: int) -> LabelSet:
    if len(names) != num_classes:
        raise ValueError(
            f"config model.class_names has {len(names)} names but model.num_classes={num_classes}: give one "
            "name per class"
        )
    labels = parse(json.loads(classes), "config model.classes") if classes is not None else from_names(names)
    if labels.names != list(names):
        raise ValueError(
            f"config model.class_names {list(names)} are not the names of model.classes "
            f"({labels.describe()}): the label set gives them; drop model.class_names"
        )
    return labels


def from_names(names: list[str] | tuple[str, ...]) -> LabelSet:
    """The label set of a model configured by class names alone (no ``model.classes``): ids = index,
    prompts = names, the Cityscapes colours for the 19 Cityscapes classes (default colours otherwise)."""
    cityscapes = list(names) == list(CLASS_NAMES)
    colours = palette()
    return LabelSet(
        tuple(
            LabelClass(n, tuple(int(v) for v in colours[k]) if cityscapes else None, (k,), n)
            for k, n in enumerate(names)
        )
    )


def _integer(value, what: str, where: str, least: int, most: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= most:
        raise LabelSetError(f"{where}: {what} must be an integer in {least}-{most}, got {value!r}")
    return value


def _color(value, what: str, where: str) -> tuple[int, int, int]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise LabelSetError(f"{where}: {what} must be [R, G, B] (three integers 0-255), got {value!r}")
    return tuple(_integer(v, what, where, 0, 255) for v in value)  # type: ignore[return-value]


def parse(data, where: str) -> LabelSet:
    """A label set from its mapping (a file's YAML, a config's ``model.classes``, a checkpoint's copy);
    every problem is a :class:`LabelSetError` naming ``where`` and what to fix."""
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list) or not data["classes"]:
        raise LabelSetError(
            f"{where}: a label set is a mapping with a non-empty list `classes:` of {{name: ...}} entries "
            f"(and optionally ignore_index), got {type(data).__name__}"
        )
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise LabelSetError(f"{where}: unknown key(s) {unknown}; a label set has {', '.join(TOP_KEYS)}")
    ignore = _integer(data.get("ignore_index", IGNORE_INDEX), "ignore_index", where, 0, MAX_ID)
    ignore_color = data.get("ignore_color")
    ignore_color = None if ignore_color is None else _color(ignore_color, "ignore_color", where)
    entries = data["classes"]
    if len(entries) > MAX_CLASSES:
        raise LabelSetError(f"{where}: {len(entries)} classes; famix takes at most {MAX_CLASSES}")
    classes, owner = [], {}
    for k, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"name": entry}
        here = f"{where}: class {k}"
        if not isinstance(entry, dict):
            raise LabelSetError(f"{here} must be a mapping such as {{name: road}}, got {entry!r}")
        unknown = sorted(set(entry) - set(CLASS_KEYS))
        if unknown:
            raise LabelSetError(f"{here}: unknown key(s) {unknown}; a class has {', '.join(CLASS_KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise LabelSetError(f"{here} needs a name (a non-empty string), got {name!r}")
        color = entry.get("color")
        color = None if color is None else _color(color, f"class {name!r} color", where)
        ids = entry.get("ids", [k])
        ids = [ids] if isinstance(ids, int) and not isinstance(ids, bool) else ids
        if not isinstance(ids, list) or not ids:
            raise LabelSetError(f"{here} ({name!r}): ids must be a non-empty list of integers, got {ids!r}")
        ids = tuple(_integer(i, f"class {name!r} ids", where, 0, MAX_ID) for i in ids)
        prompt = entry.get("prompt", name)
        if not isinstance(prompt, str) or not prompt.strip():
            raise LabelSetError(f"{here} ({name!r}): prompt must be a non-empty string, got {prompt!r}")
        for i in ids:
            if i == ignore:
                raise LabelSetError(
                    f"{where}: class {name!r} claims id {i}, which is ignore_index: remove it from the ids, "
                    "or set another ignore_index"
                )
            if i in owner:
                raise LabelSetError(
                    f"{where}: id {i} is claimed by both {owner[i]!r} and {name!r}: each raw id maps to one "
                    "class (merge them in one class's ids)"
                )
            owner[i] = name
        classes.append(LabelClass(name.strip(), color, ids, prompt.strip()))
    seen: dict = {}
    for c in classes:
        if c.name in seen:
            raise LabelSetError(f"{where}: two classes are named {c.name!r}: class names must be unique")
        seen[c.name] = c
    if ignore_color is not None and any(c.color == ignore_color for c in classes):
        raise LabelSetError(
            f"{where}: a class has the ignore_color {list(ignore_color)}: give it another color"
        )
    colours = [c.color for c in classes if c.color is not None]
    if len(set(colours)) != len(colours):
        twice = next(c for c in colours if colours.count(c) > 1)
        raise LabelSetError(f"{where}: two classes have color {list(twice)}: colours must be unique")
    if len(classes) < 2:
        raise LabelSetError(
            f"{where}: a label set needs at least two classes (one class would be every pixel, and score 100 "
            "for nothing): add the rest of the scene, e.g. {name: background}"
        )
    return LabelSet(tuple(classes), ignore, ignore_color)


def preset_names() -> list[str]:
    """The label sets shipped in ``famix/configs/classes/`` (by name, without ``.yaml``)."""
    folder = importlib.resources.files("famix") / "configs" / "classes"
    return sorted(e.name[: -len(".yaml")] for e in folder.iterdir() if e.name.endswith(".yaml"))


def load(path: str | Path) -> LabelSet:
    """A label set from a YAML file, or one shipped with famix by name (``cityscapes_categories``)."""
    p = Path(path).expanduser()
    if p.is_file():
        text = p.read_text()
    elif str(path) in preset_names():
        p = Path(str(path))
        text = (importlib.resources.files("famix") / "configs" / "classes" / f"{path}.yaml").read_text()
    else:
        raise FileNotFoundError(
            f"label set {path} not found: give the path of a YAML label set (see README, 'Your own data') "
            f"or one shipped with famix: {', '.join(preset_names())}"
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LabelSetError(f"label set {p}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    return parse(data, f"label set {p}")
