"""Small typed configs: defaults (the paper's) -> one YAML preset -> ``section.key=value`` overrides.

The resolved config is written beside every run and stored in every checkpoint and style bank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from famix.data import label_sets
from famix.data.trainids import CLASS_NAMES
from famix.style.vocabulary import DEFAULT_STYLE_WORDS


@dataclass
class ModelConfig:
    backbone: str = "RN50"  # RN50 | RN101 | RN50x4 | tiny-rn | path to an open_clip config .json
    weights: str | None = (
        None  # CLIP weights: OpenAI .pt, state-dict .pt/.bin, .safetensors, or open_clip tag
    )
    # the label set (a YAML path or shipped name, resolved to its content): gives num_classes, class_names
    classes: dict | None = None
    num_classes: int = 19
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    output_stride: int = 16
    dilation: str = "official"  # official | torchvision
    freeze: str = "last-block"  # last-block | layer4 | none | backbone
    # the CLIP weights' input normalisation, per RGB channel of [0, 1] images; None: the weights' own
    # (an open_clip tag's pretrained config; OpenAI's for a bare file). Runs store the resolved values.
    mean: list[float] | None = None
    std: list[float] | None = None

    @property
    def labels(self) -> label_sets.LabelSet:
        """The classes this model predicts, one value (``data.label_sets.model_labels``): ``classes``, else
        the label set of ``class_names`` alone; ``classes``, ``num_classes`` and ``class_names`` are its
        stored form, checked for agreement there."""
        return label_sets.model_labels(self.classes, self.class_names, self.num_classes)


@dataclass
class DataConfig:
    # the source: a dataset spec NAME[:CONDITION]:ROOT[:SPLIT] (or synthetic:DOMAIN[:N]...), or a list of them
    # (several sources, each read through the run's label set: docs/sources.md)
    train: str | list[str] = "gta5:data/gta5"
    # several sources: each one's share of the training samples (any positive numbers, one per source, in
    # data.train's order); None: shares proportional to the sources' sizes (plain concatenation)
    train_weights: list[float] | None = None
    val: list[str] = field(default_factory=list)
    crop: int = 768
    batch_size: int = 8
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))  # loader processes: cores, <= 8
    jitter: float = 0.8  # brightness = contrast = saturation jitter
    hflip: float = 0.5

    @property
    def sources(self) -> list[str]:
        """The training sources' specs, in order (one spec: a list of one)."""
        return train_sources(self.train)

    def describe_sources(self) -> str:
        """The sources for people: the spec, or ``spec (weight w) + spec (weight w)`` (or by size)."""
        specs = self.sources
        if len(specs) == 1:
            return specs[0]
        if self.train_weights is None:
            return " + ".join(specs) + " (shares by size)"
        return " + ".join(f"{s} (weight {w:g})" for s, w in zip(specs, self.train_weights, strict=True))


def train_sources(train: str | list[str]) -> list[str]:
    """``data.train`` (as a config or a stored config holds it: one spec or a list) as a list of specs."""
    return [train] if isinstance(train, str) else list(train)


@dataclass
class StyleConfig:
    mix: str = "famix"  # famix | augment | mixstyle | none
    bank: str | None = None  # the style bank: written by `famix mine`, read by `famix train`
    grid: int = 3
    beta: float = 0.1


@dataclass
class MineConfig:
    # famix: every patch, its own loss (summed), lr per patch. official: the official code exactly: the
    # first patch of each dominant class per batch in patch-major order, loss averaged over them, lr 1.
    recipe: str = "famix"
    grid: int = 3
    steps: int = 100
    lr: float | None = None  # None: the recipe's (famix 0.1 per patch; official 1 on the averaged loss)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 16
    crop: int = 768
    vocabulary: list[str] = field(default_factory=lambda: list(DEFAULT_STYLE_WORDS))
    per_class: int | None = None  # at most this many patches per dominant class per batch (random); None: all
    max_images: int | None = None  # stop after this many source images (a later run may go on further)
    save_every: int = 20  # batches between bank checkpoints (mining resumes from the last one)
    # speed and memory only: crops optimised in one PIN call, in whole batches (None: 64 on CUDA, one batch
    # elsewhere), and CUDA graphs for the PIN steps (CUDA only; not with run.amp=fp16)
    pin_crops: int | None = None
    cuda_graph: bool = False


@dataclass
class TrainConfig:
    out: str = "runs/famix"
    iterations: int = 40_000
    stop_after: int | None = (
        None  # stop (with a checkpoint) after this step; the schedule still spans iterations
    )
    lr: float = 0.1  # head; the backbone gets lr * backbone_lr_mult
    backbone_lr_mult: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    min_lr: float = 1e-6
    label_smoothing: float = 0.1
    val_interval: int = 750
    val_flip: bool = False  # validation test time: also the flipped input (famix eval --flip)
    val_scales: list[float] = field(default_factory=list)  # validation scales (famix eval --scales); []: 1
    ckpt_interval: int = 1000  # steps between latest.pt checkpoints (a crash loses at most this much)
    log_interval: int = 50
    channels_last: bool = True
    compile: str | None = (
        None  # a torch.compile backend for the training network (e.g. inductor); None: eager
    )


@dataclass
class RunConfig:
    """Settings shared by every stage (mine, train): where and how it computes."""

    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto | bf16 | fp16 | off (famix.engine.amp: auto = bf16 where native, else fp32)
    # training trackers: tensorboard, wandb, mlflow (engine/loggers.py); None: TensorBoard where installed
    loggers: list[str] | None = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    style: StyleConfig = field(default_factory=StyleConfig)
    mine: MineConfig = field(default_factory=MineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return asdict(self)


# Settings that never change what a run computes (where it writes, how often it logs, validates or
# checkpoints, where it stops, how it loads data, which device): a run may resume with them changed.
RESUMABLE_KEYS = frozenset(
    {
        "train.out",
        "train.stop_after",
        "train.val_interval",
        "train.val_flip",
        "train.val_scales",
        "train.ckpt_interval",
        "train.log_interval",
        "data.val",
        "data.workers",
        "run.device",
        "run.loggers",
        "mine.save_every",
        "mine.max_images",
        "mine.pin_crops",
        "mine.cuda_graph",
    }
)


# Numbers with a least meaningful value (counts, sizes, intervals): anything below is refused before any work.
MINIMUMS = {
    "model.num_classes": 1,
    "model.output_stride": 1,
    "data.crop": 1,
    "data.batch_size": 1,
    "data.workers": 0,
    "style.grid": 1,
    "mine.grid": 1,
    "mine.steps": 0,
    "mine.batch_size": 1,
    "mine.crop": 1,
    "mine.max_images": 1,
    "mine.save_every": 1,
    "train.iterations": 1,
    "train.stop_after": 1,
    "train.val_interval": 1,
    "train.ckpt_interval": 1,
    "train.log_interval": 1,
}


def check_values(cfg: Config) -> None:
    """Refuse numbers that mean nothing (``train.iterations=-5``, ``mine.grid=0``) and a class list that does
    not match the class count, naming the key and what is valid."""
    flat = flatten(cfg.to_dict())
    for key, least in MINIMUMS.items():
        value = flat[key]
        if value is not None and value < least:
            raise ValueError(f"config {key}={value}: give a number >= {least}")
    for key in ("train.lr", "mine.momentum", "style.beta"):
        if not flat[key] > 0:
            raise ValueError(f"config {key}={flat[key]}: give a number > 0")
    check_sources(cfg.data)
    cfg.model.labels  # noqa: B018 (the class count, names and label set agree: refused there otherwise)
    mean, std = cfg.model.mean, cfg.model.std
    if (mean is None) != (std is None):
        raise ValueError("config model.mean / model.std: give both (3 numbers each, RGB), or neither")
    for key, values in (("mean", mean), ("std", std)):
        if values is not None and (len(values) != 3 or (key == "std" and min(values) <= 0)):
            raise ValueError(
                f"config model.{key}={values}: give 3 numbers, one per RGB channel of [0, 1] images"
                + (", each > 0" if key == "std" else "")
            )


def check_sources(d: DataConfig) -> None:
    """Refuse a source list that means nothing (empty, a spec twice) and ``data.train_weights`` that do not
    give one positive share per source, naming the key. The specs themselves are checked by building them
    (``engine.checks.check_specs``)."""
    specs = d.sources
    if not specs:
        raise ValueError("config data.train=[]: give a dataset spec, or a list of them (several sources)")
    twice = sorted({s for s in specs if specs.count(s) > 1})
    if twice:
        raise ValueError(
            f"config data.train lists {', '.join(twice)} more than once: give each source once "
            "(data.train_weights sets each one's share)"
        )
    weights = d.train_weights
    if weights is None:
        return
    if len(weights) != len(specs):
        raise ValueError(
            f"config data.train_weights={weights}: give one weight per data.train source ({len(specs)}, in "
            "its order), or null for shares proportional to the sources' sizes"
        )
    if not all(w > 0 for w in weights):
        raise ValueError(
            f"config data.train_weights={weights}: give numbers > 0 (a source's share of the samples; drop a "
            "source from data.train rather than give it 0)"
        )


def resolve_classes(data: dict) -> dict:
    """Replace a ``model.classes`` path (or shipped name) by the label set's content, and set
    ``model.num_classes`` / ``model.class_names`` from it (one fact, one home: given values must agree)."""
    model = data.get("model")
    if not isinstance(model, dict) or model.get("classes") is None:
        return data
    given = model["classes"]
    if isinstance(given, str):
        labels = label_sets.load(given)
    else:
        labels = label_sets.parse(given, "config model.classes")
    for key, value in (("num_classes", len(labels)), ("class_names", labels.names)):
        if key in model and model[key] != value:
            raise ValueError(
                f"config model.{key}={model[key]!r} contradicts model.classes ({labels.describe()}): the "
                f"label set gives the class count and names; drop model.{key}"
            )
    model.update(classes=labels.to_dict(), num_classes=len(labels), class_names=labels.names)
    return data


def flatten(data: dict, prefix: str = "") -> dict:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _coerce(value, tp, where: str):
    """Check/convert a YAML value to a dataclass field type (int, float, str, bool, list, Optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        # a list goes to the list member of the union (data.train: str | list[str]), anything else to another
        fits = [a for a in options if (typing.get_origin(a) is list) == isinstance(value, list)]
        return _coerce(value, (fits or options)[0], where)
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, where) for v in value]
    if tp is float and isinstance(value, str):
        with contextlib.suppress(ValueError):  # YAML 1.1 reads "1e-3" (no dot) as a string
            value = float(value)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):  # YAML reads .inf / .nan; "inf" and "nan" come through float() above
            raise ValueError(f"config {where}={value}: give a finite number")
        return float(value)
    if tp is str and isinstance(value, bool):  # YAML 1.1 reads off / no / false (on / yes / true) as booleans
        return "on" if value else "off"  # famix's switches spell them off (run.amp=off)
    if tp is str and isinstance(value, int | float):
        return str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ValueError(f"config {where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(data: dict, cls=Config, prefix: str = ""):
    """Build a (nested) config dataclass from a dict; unknown keys are errors that list valid keys."""
    hints = typing.get_type_hints(cls)
    valid = {f.name for f in fields(cls)}
    if not isinstance(data, dict):
        where = f"section {prefix[:-1]!r}" if prefix else "file"
        raise ValueError(
            f"config {where}: expected a mapping of key: value lines (valid keys: {sorted(valid)}), "
            f"got {type(data).__name__} {data!r}"
        )
    unknown = set(data) - valid
    if unknown:
        raise ValueError(
            f"unknown config key(s) {sorted(prefix + k for k in unknown)}; "
            f"valid under {prefix or 'top level'}: {sorted(valid)}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(value or {}, tp, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(
                f"override {item!r} must look like section.key=value (e.g. train.iterations=1000)"
            )
        key, raw = item.split("=", 1)
        node = data
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p} is not a section")
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({e})") from None
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file (a path, or a preset name from famix/configs/) <- overrides."""
    data: dict = {}
    if path:
        p = Path(path)
        if p.is_file():
            text = p.read_text()
        else:
            # presets ship inside the package (famix/configs/*.yaml), so `-c tiny` works from any folder
            presets = importlib.resources.files("famix") / "configs"
            names = sorted(e.name[: -len(".yaml")] for e in presets.iterdir() if e.name.endswith(".yaml"))
            if str(path) not in names:
                raise FileNotFoundError(
                    f"config {path} not found: pass a YAML file path or one of the presets {names}"
                )
            p = presets / f"{path}.yaml"
            text = p.read_text()
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ValueError(
                f"config {p}{where}: not valid YAML ({getattr(e, 'problem', None) or e})"
            ) from None
        if not isinstance(data, dict):
            raise ValueError(
                f"config {p}: the top level must be a mapping of sections (model:, data:, train: ...), "
                f"got a {type(data).__name__}"
            )
    cfg = from_dict(resolve_classes(apply_overrides(data, overrides or [])))
    check_values(cfg)
    return cfg


def save_config(config: Config, path: str | Path) -> None:
    from famix.io import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False)))
