"""``famix eval``: a checkpoint's (m)IoU on dataset specs; each spec's result is cached beside the
checkpoint, keyed by what decides it (the checkpoint's content, the spec, test-time settings, autocast, the
label sets read or reported). The data are read through the checkpoint's own label set; ``group`` reports
IoUs per group of its classes (e.g. Cityscapes' 7 categories of a 19-class model).

``settings.condition`` ("heavy snow") evaluates on the images restyled toward those words: per batch, each
image's style map (``SegmentationNetwork.style_features``, the map forward's restyle hook sees) gets the
statistics image-level PIN mines for it toward the words' CLIP text embedding (famix's recipe: one style per
image, independent of the batch), then the model predicts on its own image with that map restyled (AdaIN:
(f - mu_f) / sigma_f * sigma* + mu*); labels unchanged. Its record adds the words, the PIN settings and the
CLIP weights' fingerprint, so a conditioned result is never a plain one (plain records are as before).
:func:`robustness` evaluates plain and under each of several conditions (docs/conditions.md)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch

from famix.config import ModelConfig
from famix.data.label_sets import LabelSet
from famix.data.label_sets import load as load_label_set
from famix.engine import pretrained
from famix.engine.amp import autocast
from famix.engine.checkpoint import (
    checkpoint_label_set,
    checkpoint_precision,
    load_checkpoint,
    load_segmenter,
    model_config,
    state_fingerprint,
)
from famix.engine.checks import check_specs
from famix.engine.conditions import clip_weights, load_clip
from famix.engine.distributed import current, require_session, resolve_device
from famix.engine.evaluate import Condition, EvalResult, evaluate_specs
from famix.engine.exported import OnnxSegmenter
from famix.engine.outputs import check_output_path, check_replaceable
from famix.engine.protocols import describe as describe_protocol
from famix.engine.protocols import resolve as resolve_protocol
from famix.engine.results import default_results_path, is_results_file, write_results
from famix.engine.runs import RunRecord, cached, lookup
from famix.io import file_fingerprint
from famix.models.clip import weights_fingerprint
from famix.models.towers import style_grid
from famix.paper import PIN_MOMENTUM, PIN_WEIGHT_DECAY
from famix.settings import EvalSettings, InferenceSettings, check_condition
from famix.stages import report as page
from famix.style.image_pin import check_description, image_pin, image_restyle
from famix.style.prompts import TextEmbedder


def cache_path(checkpoint: str | Path) -> Path:
    """Where a checkpoint's evaluations are cached: ``best.pt`` -> ``best.eval-cache.json`` beside it."""
    return pretrained.eval_cache_path(checkpoint)  # a folder's or Hub id's: in the working folder


def _record(
    spec: str,
    tta: InferenceSettings,
    amp: str,
    fingerprint: str,
    labels: dict,
    protocol: str,
    condition: Conditioning | None = None,
) -> RunRecord:
    """``labels``: the label sets given ({"classes": ..., "group": ...}); ``tta``: the settings the protocol
    gives ``spec``. Settings at their defaults are left out: records (and cached results) of plain
    evaluations are those of earlier famix versions; a condition adds its words and PIN settings, and the
    CLIP weights among the inputs."""
    settings = {"data": spec, "tta": tta.record(), "amp": amp, **labels}
    settings |= {"protocol": protocol} if protocol != "paper" else {}
    if condition is None:
        return RunRecord("evaluate", settings, {"checkpoint": fingerprint})
    inputs = {"checkpoint": fingerprint, "clip weights": condition.fingerprint}
    return RunRecord("evaluate", {**settings, "condition": condition.record()}, inputs)


@dataclass(frozen=True)
class Conditioning:
    """A condition of an evaluation, resolved: ``settings`` (its words and PIN settings) and the CLIP weights
    that speak for the model (``weights``: a file or open_clip tag; ``fingerprint``: their content's)."""

    settings: EvalSettings
    weights: str
    fingerprint: str

    @classmethod
    def resolve(cls, s: EvalSettings, ckpt: dict) -> Conditioning | None:
        """None for a plain evaluation; else the CLIP weights ``s.condition_weights`` or the checkpoint's
        (``engine.conditions.clip_weights``), refused with what to pass when there are none."""
        if s.condition is None:
            return None
        weights = clip_weights(ckpt, s.condition_weights)
        if weights is None:
            raise ValueError(
                f"--condition {s.condition!r} mines styles with the CLIP the model was trained from, and its "
                "checkpoint names no CLIP weights readable here: pass them with --condition-weights FILE"
            )
        return cls(s, weights, weights_fingerprint(weights))

    def record(self) -> dict:
        """What decides the restyled images: the words and image-level PIN's settings (famix's recipe)."""
        s = self.settings
        return {
            "text": s.condition,
            "recipe": "famix",
            "steps": s.condition_steps,
            "lr": s.condition_lr,
            "momentum": PIN_MOMENTUM,
            "weight_decay": PIN_WEIGHT_DECAY,
        }

    def describe(self) -> str:
        """The line printed above a conditioned result."""
        s = self.settings
        return (
            f"condition {s.condition!r}: each image restyled by image-level PIN ({s.condition_steps} steps, "
            f"lr {s.condition_lr:g}), CLIP {self.weights}"
        )


def condition_hook(model, clip, text: torch.Tensor, s: EvalSettings, amp) -> Condition:
    """The restyle hook of each batch under ``s.condition``: normalised images [B, 3, H, W] -> their style
    maps (as forward computes them: padded, under the evaluation's autocast ``amp``) -> one style per image
    mined by image-level PIN toward ``text`` [D] through ``clip``'s tail -> the hook that gives each image's
    style map its style (``image_restyle``). 0 steps: each image's own statistics, the map unchanged."""
    pool = style_grid(clip.visual)

    def hook(images: torch.Tensor):
        with torch.no_grad(), autocast(images.device, amp):
            f = model.style_features(model.pad(images)[0])  # [B, C, h, w]
        with torch.enable_grad():  # PIN's SGD (the evaluation around it runs without autograd)
            styles = image_pin(clip.visual, f, text, pool, s.condition_steps, s.condition_lr, recipe="famix")
        return partial(image_restyle, mu=styles.mu, sigma=styles.sigma, relu=model.style_relu)

    return hook


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
        group.group_lut(len(model_cfg.labels), f"--group {s.group}")
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
    condition = Conditioning.resolve(settings, ckpt)
    fingerprint = pretrained.fingerprint(checkpoint)
    record = _record(spec, tta, amp, fingerprint, given, settings.protocol, condition)
    return lookup(path, record) is not None


def run(
    checkpoint: str | Path,
    specs: list[str],
    settings: EvalSettings | None = None,
    cache: str | Path | None = "auto",
    progress: bool = True,
    say=print,
    report: str | Path | None = None,
    force: bool = False,
    html: bool = False,
) -> tuple[dict[str, EvalResult], list[str]]:
    """Evaluate ``checkpoint`` on every spec (all checked before the first is evaluated); returns
    ``({spec: result}, class names)`` (the grouping's when ``settings.group``). ``cache``: the JSON file of
    cached results ("auto": beside the checkpoint, None: no cache); a spec already evaluated with the same
    record returns at once.
    ``report``: also write the results file there ("auto": beside the checkpoint, named by the data); an
    existing file there that ``famix eval`` did not write is refused unless ``force``; ``html``: and its
    page (``famix report``) beside it."""
    s = settings or EvalSettings()
    if is_onnx(checkpoint):
        return _evaluate_onnx(Path(checkpoint), specs, s, cache, progress, say, report, force, html)
    ckpt = load_checkpoint(checkpoint)  # read once
    source = Source(str(checkpoint), pretrained.fingerprint(checkpoint), pretrained.base_path(checkpoint))
    return _evaluate(ckpt, source, None, specs, s, cache, progress, say, report, force, html)


def is_onnx(path) -> bool:
    """Whether ``path`` names an ONNX file (``famix export --format onnx``), evaluated by ONNX Runtime."""
    return isinstance(path, (str, Path)) and Path(path).suffix.lower() == ".onnx"


def _refuse_onnx_condition(path: Path, condition: str | None) -> None:
    if condition is not None:
        raise ValueError(
            f"--condition {condition!r} restyles the style map inside the network, which an ONNX file does "
            f"not expose: evaluate the checkpoint {path.name} was exported from"
        )


def _evaluate_onnx(path: Path, specs, s: EvalSettings, cache, progress, say, report, force, html=False):
    # An exported file: its metadata stands for the checkpoint's config; ONNX Runtime computes in the file's
    # own precision. Cached and reported beside it under its own name (best.onnx: best-onnx.eval-cache.json),
    # never in the files of the checkpoint it came from.
    if s.amp not in (None, "off"):
        raise ValueError(
            f"--amp {s.amp}: {path.name} is an ONNX file, computed in its own precision by ONNX Runtime "
            "(float32, or int8 for a --int8 export): leave --amp out"
        )
    _refuse_onnx_condition(path, s.condition)
    network = OnnxSegmenter(path, resolve_device(s.device, current()))
    source = Source(str(path), file_fingerprint(path), path.with_name(f"{path.stem}-onnx{path.suffix}"))
    view = network.checkpoint_view()
    return _evaluate(view, source, network, specs, s, cache, progress, say, report, force, html)


def run_loaded(
    network,
    ckpt: dict,
    where: str | Path | None,
    specs: list[str],
    settings: EvalSettings | None = None,
    progress: bool = True,
    say=print,
) -> tuple[dict[str, EvalResult], list[str]]:
    """:func:`run` of a model already in memory (``famix.evaluate`` of a loaded model): ``network`` with the
    checkpoint dict it came from (``ckpt``: its config and record; the weights are the network's own, as
    they are now). The same input checks; results cached beside ``where`` (the file or folder it was loaded
    from; None: not cached), keyed by the weights' content."""
    name = str(where) if where is not None else "the loaded model"
    base = pretrained.base_path(where) if where is not None else None
    source = Source(name, state_fingerprint(network.state_dict(), ckpt.get("config", {})), base)
    s = settings or EvalSettings()
    return _evaluate(ckpt, source, network, specs, s, "auto", progress, say, None, False)


@dataclass(frozen=True)
class Source:
    """What is evaluated, for the record and the files: its name in messages, its content's fingerprint, and
    the path results are kept beside (None: nowhere)."""

    name: str
    fingerprint: str
    base: Path | None


def _evaluate(
    ckpt: dict,
    source: Source,
    network,
    specs: list[str],
    s: EvalSettings,
    cache,
    progress: bool,
    say,
    report,
    force: bool,
    html: bool = False,
) -> tuple[dict[str, EvalResult], list[str]]:
    """The evaluation of :func:`run` and :func:`run_loaded`: ``network`` None builds it from ``ckpt``."""
    if not specs:
        raise ValueError("give at least one dataset spec to evaluate on (--data SPEC [SPEC ...])")
    labels, group = label_sets(source.name, model_config(ckpt), s)
    views = {spec: resolve_protocol(s.protocol, spec, s.tta) for spec in specs}  # spec -> (built spec, tta)
    check_specs([built for built, _ in views.values()], "--data", labels)
    condition = Conditioning.resolve(s, ckpt)
    if report == "auto":
        named = [Path(s.group).stem] if s.group else []
        named += [s.protocol] if s.protocol != "paper" else []
        named += [condition_name(s.condition)] if s.condition is not None else []
        report = default_results_path(source.base, specs, s.tta, "-".join(named) or None)
    if report is not None:
        check_output_path(report, "--json")
        check_replaceable(report, is_results_file, "a results file written by `famix eval`", force)
        if html:
            page.check_ours(page.default_path(report))
    elif html:
        raise ValueError("--report writes the page of the results JSON: leave --json on (it is by default)")
    info = current()
    require_session(info, "evaluation")
    device = resolve_device(s.device, info)
    model = (
        load_segmenter(ckpt, device=device, channels_last=True)[0] if network is None else network.to(device)
    )
    amp_name, amp = precision(s, ckpt, device)
    path = (cache_path(source.base) if source.base is not None else None) if cache == "auto" else cache
    results = {}
    given = _given(s, labels, group)
    hook = None

    def conditioned() -> Condition | None:  # CLIP loaded and the words embedded once, when first needed
        nonlocal hook
        if condition is not None and hook is None:
            clip = load_clip(model_config(ckpt).backbone, condition.weights, device)
            check_description(s.condition, getattr(clip, "context_length", 77))
            hook = condition_hook(model, clip, TextEmbedder(clip)([s.condition])[0], s, amp)
        return hook

    for spec in specs:
        built, tta = views[spec]
        record = _record(spec, tta, amp_name, source.fingerprint, given, s.protocol, condition)

        def compute(built=built, tta=tta):
            one = evaluate_specs(
                model, [built], len(labels), device, tta, amp, s.batch_size, s.workers, progress,
                labels=labels, group=group, condition=conditioned(),
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
            "checkpoint": source.name,
            "test_time": asdict(s.tta),
            "protocol": s.protocol,
            "protocol_settings": {spec: asdict(tta) for spec, (_, tta) in views.items()},
            "amp": amp_name,
            "label_set": (group or labels).to_dict(),
        }
        if condition is not None:
            extra["condition"] = {**condition.record(), "clip_weights": condition.weights}
        if group is not None:
            extra["grouped_from"] = labels.to_dict()
        write_results(results, report, names, extra)
        say(f"results written to {report}")
        if html:
            page.run(report, say=say)  # it says where the page is
    if info.main:  # the line above the tables
        say(describe_protocol(s.protocol, s.tta, amp_name))
        if condition is not None:
            say(condition.describe())
    return results, names


def condition_name(text: str) -> str:
    """A condition's part of a results file name: "Heavy snow!" -> "condition=heavy-snow" (words in other
    scripts: a hash of the text)."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return f"condition={name or hashlib.sha256(text.encode()).hexdigest()[:8]}"


def robustness(
    checkpoint: str | Path,
    specs: list[str],
    conditions: list[str],
    settings: EvalSettings | None = None,
    cache: str | Path | None = "auto",
    progress: bool = True,
    say=print,
    report: str | Path | None = None,
    force: bool = False,
    html: bool = False,
) -> tuple[dict[str | None, dict[str, EvalResult]], list[str]]:
    """``checkpoint`` on every spec plainly (key None) and restyled toward each of ``conditions`` (the same
    ``settings`` otherwise): ``({None or condition: {spec: result}}, class names)``, each row a :func:`run`
    (cached and reported as one: ``report`` "auto" names each row's file by its data and condition; a path
    names the plain row's, the conditions' beside it as ``<stem>.condition=<words>.json``). Every condition
    and the CLIP weights are checked before the first evaluation."""
    s = settings or EvalSettings()
    if not conditions:
        raise ValueError('give at least one condition in words (--condition "heavy snow")')
    rows = [replace(s, condition=check_condition(c)) for c in conditions]  # each refused here if empty
    named: dict[str, str] = {}
    for c in conditions:
        if conditions.count(c) > 1:
            raise ValueError(f"--condition {c!r} is given twice: give each condition once")
        other = named.setdefault(condition_name(c), c)
        if other != c:
            raise ValueError(
                f"--condition {other!r} and {c!r} would share a results file ({condition_name(c)}): give "
                "conditions in words that differ by more than case or punctuation"
            )
    if is_onnx(checkpoint):
        _refuse_onnx_condition(Path(checkpoint), conditions[0])
    reports = [report] * (len(conditions) + 1)
    if report not in (None, "auto"):  # the plain row's file, each condition's beside it: all checked now
        path = Path(report)
        reports[1:] = [path.with_name(f"{path.stem}.{condition_name(c)}{path.suffix}") for c in conditions]
        for where in reports:
            check_output_path(where, "--json")
            check_replaceable(where, is_results_file, "a results file written by `famix eval`", force)
    ckpt = load_checkpoint(checkpoint)  # read once
    Conditioning.resolve(rows[0], ckpt)  # the CLIP weights: refused now rather than after the plain row
    source = Source(str(checkpoint), pretrained.fingerprint(checkpoint), pretrained.base_path(checkpoint))
    table: dict[str | None, dict[str, EvalResult]] = {}
    names: list[str] = []
    for c, row, where in zip([None, *conditions], [s, *rows], reports, strict=True):
        table[c], names = _evaluate(ckpt, source, None, specs, row, cache, progress, say, where, force, html)
    return table, names
