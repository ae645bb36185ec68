"""Every input of a stage checked before any work starts: numbers, dataset specs, files. Each problem is one
clear error naming the option or file and what to do (``ValueError`` / ``FileNotFoundError``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from torch.utils.data import Dataset

from famix.config import Config, check_values
from famix.data.datasets import build_dataset, check_label_reading
from famix.data.label_sets import LabelSet, LabelSetError, from_names, parse
from famix.data.specs import parse_spec
from famix.engine.distributed import current, resolve_device
from famix.engine.loggers import check_trackers
from famix.engine.outputs import check_folder, check_output_path
from famix.models.build import normalization
from famix.models.clip import check_weights_reachable, weights_fingerprint
from famix.style.bank import StyleBank


def check_specs(specs: Sequence[str], option: str, labels: LabelSet | None = None) -> dict[str, Dataset]:
    """Build each dataset spec (which checks its fields, folders and pairs, with every filter its loader
    runs) and require at least one image; returns ``{spec: dataset}``. ``option``: the option that gave
    them, named in errors; ``labels``: the label set the data is read through (None: the 19 trainIds)."""
    built = {}
    for spec in specs:
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"{option}: {spec!r} is not a dataset spec (NAME[:CONDITION]:ROOT[:SPLIT])")
        name = parse_spec(spec).written_name
        if "=" in name and "." in name.split("=")[0]:
            raise ValueError(
                f"{option}: {spec!r} looks like a config override, not a dataset spec: put section.key=value "
                "overrides before the options that take a list of specs"
            )
        try:
            dataset = build_dataset(spec, labels)
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"{option} {spec}: {e}") from None
        if len(dataset) == 0:
            raise ValueError(f"{option} {spec}: the dataset has no image/label pairs to load")
        try:
            check_label_reading(spec, dataset, labels)
        except ValueError as e:
            raise ValueError(f"{option} {spec}: {e}") from None
        built[spec] = dataset
    return built


def warn_crop(dataset: Dataset, crop: int, option: str) -> None:
    """Warn when the crop is larger than the source images (the first one): crops are then mostly padding
    (ignored pixels) and every step computes on them, many times slower for nothing."""
    spec = getattr(dataset, "spec", "the source")
    image, _ = dataset[0]
    h, w = image.shape[-2:]
    if crop > max(h, w):
        warnings.warn(
            f"{option}={crop} is larger than the images of {spec} ({h}x{w}): each crop is mostly padding "
            f"(ignored), and costs {crop * crop / (h * w):.0f}x the pixels; set {option} to at most "
            f"{max(h, w)}",
            stacklevel=2,
        )


def check_train_inputs(cfg: Config) -> None:
    """``famix train``'s inputs: the config's numbers, the source and validation specs, the CLIP weights and
    the style bank its mixing reads."""
    check_values(cfg)
    resolve_device(cfg.run.device, current())
    if cfg.run.loggers is not None:
        check_trackers(cfg.run.loggers)
    check_folder(cfg.train.out, "train.out")
    labels = cfg.model.labels
    sources = check_specs(cfg.data.sources, "data.train", labels)  # every source, before any work
    check_specs(cfg.data.val, "data.val", labels)
    for source in sources.values():
        warn_crop(source, cfg.data.crop, "data.crop")
    weights_fingerprint(cfg.model.weights)  # a missing weights file: FileNotFoundError naming it
    check_weights_reachable(cfg.model.backbone, cfg.model.weights)
    if cfg.style.mix in ("famix", "augment"):
        if not cfg.style.bank:
            raise ValueError(
                f"style.mix={cfg.style.mix} needs a style bank: set style.bank=PATH (made by `famix mine`) "
                "or choose style.mix=mixstyle|none"
            )
        bank = StyleBank.load(cfg.style.bank)  # missing or unreadable: an error naming the file
        check_bank_classes(bank, labels, cfg.style.bank)
        norm = normalization(cfg.model)
        check_bank_normalization(bank, norm, cfg.style.bank)


def bank_label_set(bank: StyleBank) -> LabelSet:
    """The label set a bank was mined for (banks of the 19 trainIds, and converted ones, store only names)."""
    stored = bank.metadata.get("label_set")
    return parse(stored, "the style bank's label set") if stored is not None else from_names(bank.class_names)


def check_bank_classes(bank: StyleBank, labels: LabelSet, path) -> None:
    """Refuse a bank mined for other classes than the model's (names, ids or prompts), naming both."""
    theirs = bank_label_set(bank)
    if not theirs.same_classes(labels):
        raise LabelSetError(
            f"style bank {path} was mined for the label set of {theirs.describe()}, but the model's label "
            "set "
            f"(model.classes) is {labels.describe()}"
            + (" with other ids or prompts" if theirs.names == labels.names else "")
            + ": mine a bank with this model.classes (`famix mine`), or train with the bank's label set"
        )


def check_bank_normalization(bank: StyleBank, norm, path) -> None:
    """Refuse a bank mined under another input normalisation than the model's: its styles are statistics
    of features of differently normalised images."""
    theirs = bank.normalization
    ours = tuple(tuple(float(v) for v in part) for part in norm)
    if theirs != ours:
        raise ValueError(
            f"style bank {path} was mined from images normalised with mean {list(theirs[0])}, std "
            f"{list(theirs[1])}, but the model's CLIP weights take mean {list(ours[0])}, std "
            f"{list(ours[1])}: "
            "mine a bank with this model.weights (and model.mean / model.std), or train with the bank's"
        )


def check_mine_inputs(cfg: Config) -> None:
    """``famix mine``'s inputs: numbers, device, where the bank goes, the source spec and the CLIP weights."""
    check_values(cfg)
    resolve_device(cfg.run.device, current())
    if not cfg.style.bank:
        raise ValueError("set style.bank=PATH: the style bank `famix mine` writes (and `famix train` reads)")
    check_output_path(cfg.style.bank, "style.bank")  # a folder there: refused now, not after mining
    for source in check_specs(cfg.data.sources, "data.train", cfg.model.labels).values():
        warn_crop(source, cfg.mine.crop, "mine.crop")
    weights_fingerprint(cfg.model.weights)
    check_weights_reachable(cfg.model.backbone, cfg.model.weights)
