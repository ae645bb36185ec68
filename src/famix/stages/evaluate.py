"""``famix eval``: a checkpoint's (m)IoU on dataset specs; each spec's result is cached beside the
checkpoint, keyed by what decides it (the checkpoint's content, the spec, test-time settings, autocast, the
label sets read or reported). The data are read through the checkpoint's own label set; ``group`` reports
IoUs per group of its classes (e.g. Cityscapes' 7 categories of a 19-class model)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from famix.config import ModelConfig
from famix.data.label_sets import LabelSet
from famix.data.label_sets import load as load_label_set
from famix.engine import pretrained
from famix.engine.checkpoint import (
    checkpoint_label_set,
    checkpoint_precision,
    load_checkpoint,
    load_segmenter,
    model_config,
)
from famix.engine.checks import check_specs
from famix.engine.distributed import current, require_session, resolve_device
from famix.engine.evaluate import EvalResult, evaluate_specs
from famix.engine.inference import PLAIN, InferenceSettings
from famix.engine.outputs import check_output_path
from famix.engine.protocols import describe as describe_protocol
from famix.engine.protocols import resolve as resolve_protocol
from famix.engine.results import default_results_path, write_results
from famix.engine.runs import RunRecord, cached, lookup


@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate. ``tta``, the autocast and the label sets decide the result; device, batch size,
    workers do not. ``classes``: the label set (file or shipped name) the checkpoint must have (a
    checkpoint that stores none, e.g. an official one, takes its ids and colours when the names agree);
    ``group``: a label set whose ``ids`` are the checkpoint's class indices, to report merged classes.
    ``protocol``: ``paper`` or ``mmseg`` (:mod:`famix.engine.protocols`); ``amp`` None: the checkpoint's."""

    tta: InferenceSettings = field(default=PLAIN)
    amp: str | None = None  # None: the checkpoint's run.amp (one precision per checkpoint)
    device: str = "auto"
    batch_size: int = 4
    workers: int = 0
    classes: str | None = None
    group: str | None = None
    protocol: str = "paper"  # engine.protocols: the test-time settings per dataset


def cache_path(checkpoint: str | Path) -> Path:
    """Where a checkpoint's evaluations are cached: ``best.pt`` -> ``best.eval-cache.json`` beside it."""
    ckpt = pretrained.base_path(checkpoint)  # a folder's or Hub id's: in the working folder
    return ckpt.with_name(f"{ckpt.stem}.eval-cache.json")


def _record(
    spec: str, tta: InferenceSettings, amp: str, fingerprint: str, labels: dict, protocol: str
) -> RunRecord:
    """``labels``: the label sets given ({"classes": ..., "group": ...}); ``tta``: the settings the protocol
    gives ``spec``. Settings at their defaults are left out: records (and cached results) of plain
    evaluations are those of earlier famix versions."""
    settings = {"data": spec, "tta": tta.record(), "amp": amp, **labels}
    return RunRecord(
        "evaluate",
        {**settings, **({"protocol": protocol} if protocol != "paper" else {})},
        {"checkpoint": fingerprint},
    )


def precision(s: EvalSettings, ckpt: dict, device) -> tuple[str, object]:
    """(the autocast name used, its dtype): ``--amp``, else the checkpoint's ``run.amp``; "off" where
    autocast does not apply (the CPU)."""
    return checkpoint_precision(s.amp, ckpt, device)


def label_sets(checkpoint, model_cfg: ModelConfig, s: EvalSettings) -> tuple[LabelSet, LabelSet | None]:
    """(the label set the data are read through, the grouping reported or None), checked against the
    checkpoint's classes."""
    labels = checkpoint_label_set(model_cfg, s.classes, checkpoint)
    group = load_label_set(s.group) if s.group else None
    if group is not None:
        group.group_lut(model_cfg.num_classes, f"--group {s.group}")
    return labels, group


def _given(s: EvalSettings, labels: LabelSet, group: LabelSet | None) -> dict:
    out = {"classes": labels.to_dict()} if s.classes else {}
    return {**out, "group": group.to_dict()} if group is not None else out


def is_cached(checkpoint: str | Path, spec: str, settings: EvalSettings) -> bool:
    """Whether :func:`run` would return ``spec``'s result from the checkpoint's cache."""
    path = cache_path(checkpoint)
    if not path.is_file():
        return False
    ckpt = load_checkpoint(checkpoint)
    amp, _ = precision(settings, ckpt, resolve_device(settings.device, current()))
    given = _given(settings, *label_sets(checkpoint, model_config(ckpt), settings))
    _, tta = resolve_protocol(settings.protocol, spec, settings.tta)
    record = _record(spec, tta, amp, pretrained.fingerprint(checkpoint), given, settings.protocol)
    return lookup(path, record) is not None


def run(
    checkpoint: str | Path,
    specs: list[str],
    settings: EvalSettings | None = None,
    cache: str | Path | None = "auto",
    progress: bool = True,
    say=print,
    report: str | Path | None = None,
) -> tuple[dict[str, EvalResult], list[str]]:
    """Evaluate ``checkpoint`` on every spec (all checked before the first is evaluated); returns
    ``({spec: result}, class names)`` (the grouping's when ``settings.group``). ``cache``: the JSON file of
    cached results ("auto": beside the checkpoint, None: no cache); a spec already evaluated with the same
    record returns at once.
    ``report``: also write the results file there ("auto": beside the checkpoint, named by the data)."""
    s = settings or EvalSettings()
    if not specs:
        raise ValueError("give at least one dataset spec to evaluate on (--data SPEC [SPEC ...])")
    ckpt = load_checkpoint(checkpoint)  # read once
    labels, group = label_sets(checkpoint, model_config(ckpt), s)
    views = {spec: resolve_protocol(s.protocol, spec, s.tta) for spec in specs}  # spec -> (built spec, tta)
    check_specs([built for built, _ in views.values()], "--data", labels)
    if report == "auto":
        named = [Path(s.group).stem] if s.group else []
        named += [s.protocol] if s.protocol != "paper" else []
        report = default_results_path(pretrained.base_path(checkpoint), specs, s.tta, "-".join(named) or None)
    if report is not None:
        check_output_path(report, "--json")
    info = current()
    require_session(info, "evaluation")
    device = resolve_device(s.device, info)
    model, cfg = load_segmenter(ckpt, device=device)
    amp_name, amp = precision(s, ckpt, device)
    fingerprint = pretrained.fingerprint(checkpoint)
    path = cache_path(checkpoint) if cache == "auto" else cache
    results = {}
    given = _given(s, labels, group)
    for spec in specs:
        built, tta = views[spec]
        record = _record(spec, tta, amp_name, fingerprint, given, s.protocol)

        def compute(built=built, tta=tta):
            one = evaluate_specs(
                model, [built], cfg.num_classes, device, tta, amp, s.batch_size, s.workers, progress,
                labels=labels, group=group,
            )  # fmt: skip
            return one[built].to_dict()

        if path is None:
            results[spec] = EvalResult.from_dict(compute())
            continue
        quiet = (lambda _: None) if not info.main else (lambda msg, spec=spec: say(f"{spec}: {msg}"))
        results[spec] = EvalResult.from_dict(cached(path, record, compute, quiet, write=info.main))
    names = (group or labels).names
    if report is not None and info.main:
        extra = {
            "checkpoint": str(checkpoint),
            "test_time": asdict(s.tta),
            "protocol": s.protocol,
            "protocol_settings": {spec: asdict(tta) for spec, (_, tta) in views.items()},
            "amp": amp_name,
            "label_set": (group or labels).to_dict(),
        }
        if group is not None:
            extra["grouped_from"] = labels.to_dict()
        write_results(results, report, names, extra)
        say(f"results written to {report}")
    if info.main:  # the line above the tables
        say(describe_protocol(s.protocol, s.tta, amp_name))
    return results, names
