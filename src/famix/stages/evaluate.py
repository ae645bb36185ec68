"""``famix eval``: a checkpoint's (m)IoU on dataset specs; each spec's result is cached beside the
checkpoint, keyed by what decides it (the checkpoint's content, the spec, test-time settings, autocast)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from famix.engine.amp import amp_dtype
from famix.engine.checkpoint import load_segmenter
from famix.engine.checks import check_specs
from famix.engine.distributed import current, require_session, resolve_device
from famix.engine.evaluate import EvalResult, evaluate_specs
from famix.engine.inference import PLAIN, InferenceSettings
from famix.engine.outputs import check_output_path
from famix.engine.results import default_results_path, write_results
from famix.engine.runs import RunRecord, cached, file_fingerprint, lookup


@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate. ``tta`` and the autocast decide the result; device, batch size, workers do not."""

    tta: InferenceSettings = field(default=PLAIN)
    amp: str = "bf16"
    device: str = "auto"
    batch_size: int = 4
    workers: int = 0


def cache_path(checkpoint: str | Path) -> Path:
    """Where a checkpoint's evaluations are cached: ``best.pt`` -> ``best.eval-cache.json`` beside it."""
    ckpt = Path(checkpoint)
    return ckpt.with_name(f"{ckpt.stem}.eval-cache.json")


def _record(spec: str, s: EvalSettings, amp, fingerprint: str) -> RunRecord:
    return RunRecord(
        "evaluate",
        {"data": spec, "tta": asdict(s.tta), "amp": s.amp if amp is not None else "off"},
        {"checkpoint": fingerprint},
    )


def is_cached(checkpoint: str | Path, spec: str, settings: EvalSettings) -> bool:
    """Whether :func:`run` would return ``spec``'s result from the checkpoint's cache."""
    path = cache_path(checkpoint)
    if not path.is_file():
        return False
    amp = amp_dtype(settings.amp, resolve_device(settings.device, current()))
    return lookup(path, _record(spec, settings, amp, file_fingerprint(checkpoint))) is not None


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
    ``({spec: result}, class names)``. ``cache``: the JSON file of cached results ("auto": beside the
    checkpoint, None: no cache); a spec already evaluated with the same record returns at once.
    ``report``: also write the results file there ("auto": beside the checkpoint, named by the data)."""
    s = settings or EvalSettings()
    if not specs:
        raise ValueError("give at least one dataset spec to evaluate on (--data SPEC [SPEC ...])")
    check_specs(specs, "--data")
    if report == "auto":
        report = default_results_path(checkpoint, specs, s.tta)
    if report is not None:
        check_output_path(report, "--json")
    info = current()
    require_session(info, "evaluation")
    device = resolve_device(s.device, info)
    model, cfg = load_segmenter(checkpoint, device=device)
    amp = amp_dtype(s.amp, device)
    fingerprint = file_fingerprint(checkpoint)
    path = cache_path(checkpoint) if cache == "auto" else cache
    results = {}
    for spec in specs:
        record = _record(spec, s, amp, fingerprint)

        def compute(spec=spec):
            one = evaluate_specs(
                model, [spec], cfg.num_classes, device, s.tta, amp, s.batch_size, s.workers, progress
            )
            return one[spec].to_dict()

        if path is None:
            results[spec] = EvalResult.from_dict(compute())
            continue
        quiet = (lambda _: None) if not info.main else (lambda msg, spec=spec: say(f"{spec}: {msg}"))
        results[spec] = EvalResult.from_dict(cached(path, record, compute, quiet, write=info.main))
    names = list(cfg.class_names)
    if report is not None and info.main:
        extra = {"checkpoint": str(checkpoint), "test_time": asdict(s.tta)}
        write_results(results, report, names, extra)
        say(f"results written to {report}")
    return results, names
