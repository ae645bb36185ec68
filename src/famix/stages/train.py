"""``famix train``: train a segmenter into ``train.out``, resume it, or return the finished run's result.

The stage owns the run: its record (:func:`train_record`: what decides the weights), the run folder's
lifecycle (:func:`open_run`, :func:`finished`, :func:`status`) and :func:`run`; the loop itself is
``famix.engine.train.train``. ``famix adapt`` fine-tunes through :func:`run` (kind "adapt")."""

from __future__ import annotations

from pathlib import Path

from famix.config import RESUMABLE_KEYS, Config
from famix.engine.amp import describe, precision
from famix.engine.checkpoint import load_checkpoint
from famix.engine.checks import check_train_inputs
from famix.engine.distributed import current, resolve_device
from famix.engine.loggers import MetricsLogger
from famix.engine.runs import (
    KEY,
    RunRecord,
    State,
    Status,
    check_same,
    held,
    normalization_settings,
    source_settings,
)
from famix.engine.train import train
from famix.io import file_fingerprint
from famix.models.clip import weights_fingerprint
from famix.stages import report as page

REFUSAL = "Pass another train.out, or move that folder away"
# The config sections that decide what training computes (mining settings live in the bank file).
TRAIN_SECTIONS = ("model", "data", "style", "train", "run")
# Paths whose files are run inputs: recorded by content (a fingerprint), not by name.
INPUT_PATHS = ("model.weights", "style.bank")


def train_record(cfg: Config, kind: str = "train", inputs: dict | None = None) -> RunRecord:
    """What decides a training run's result: the ``TRAIN_SECTIONS`` less ``config.RESUMABLE_KEYS`` and the
    input paths, the autocast actually used, and the CLIP weights' and style bank's fingerprints (plus
    ``inputs``, e.g. the checkpoint a fine-tuning starts from)."""
    full = cfg.to_dict()
    skip = RESUMABLE_KEYS | set(INPUT_PATHS)
    settings = {s: {k: v for k, v in full[s].items() if f"{s}.{k}" not in skip} for s in TRAIN_SECTIONS}
    if cfg.model.classes is None:  # no label set: the record of the 19 trainIds, as before label sets
        del settings["model"]["classes"]
    del settings["model"]["mean"], settings["model"]["std"], settings["data"]["train_weights"]
    settings["model"].update(normalization_settings(cfg.model))
    settings["data"].update(source_settings(cfg.data))  # one source: as before several sources
    settings["run"]["amp"] = precision(cfg.run.amp, resolve_device(cfg.run.device, current()))[0]
    uses_bank = cfg.style.mix in ("famix", "augment") and cfg.style.bank
    files = {
        "clip weights": weights_fingerprint(cfg.model.weights),
        "bank": file_fingerprint(cfg.style.bank) if uses_bank and Path(cfg.style.bank).is_file() else None,
    }
    return RunRecord(kind, settings, {**files, **(inputs or {})})


def open_run(out: Path, record: RunRecord, fix: str) -> dict | None:
    """The run folder's ``latest.pt`` if it holds this run (to resume from, or finished), None for a new run;
    a checkpoint of another run is refused, naming every changed key (``fix``: what to do instead)."""
    latest = out / "latest.pt"
    if not latest.is_file():
        return None
    ckpt = load_checkpoint(latest)
    check_same(record, ckpt.get(KEY), latest, fix)
    return ckpt


def check_out(cfg: Config) -> None:
    """What :func:`run` refuses in ``train.out`` whatever run it holds, said before any work (composites ask
    it for every run folder before their first stage): a training log famix did not write."""
    MetricsLogger.check(Path(cfg.train.out))


def finished(ckpt: dict | None, cfg: Config) -> bool:
    """Whether a run's ``latest.pt`` (:func:`open_run`; None: nothing yet) reached ``train.iterations``."""
    return ckpt is not None and ckpt["cur_itrs"] >= cfg.train.iterations


def run(
    cfg: Config,
    say=print,
    fix: str = REFUSAL,
    kind: str = "train",
    inputs: dict | None = None,
    init_state: dict | None = None,
    name: str = "famix train",
    option: str = "train.out",
) -> dict:
    """Train ``cfg`` (checked first) and return ``{"step", "best_miou"}``: a finished run with the same
    record returns at once, an interrupted one resumes from its ``latest.pt``, another run's is refused
    (``fix``: what the refusal tells the user to do, in the calling command's own options).

    A composite verb trains through here: ``kind`` and ``inputs`` go into the record (``famix adapt``:
    "adapt" and the checkpoint it starts from), ``init_state`` are the weights to start from instead of
    ``cfg.model``'s, ``name`` is the command the messages name, ``option`` how its user names the folder.
    While it runs, the folder is held (``engine.runs.held``): a second command on it refuses."""
    check_train_inputs(cfg)
    record = train_record(cfg, kind, inputs)
    out = Path(cfg.train.out)
    with held(out, option, enabled=current().main):
        check_out(cfg)
        ckpt = open_run(out, record, fix)
        if finished(ckpt, cfg):
            if current().main:
                say(f"{name}: {out} holds this run, finished at step {ckpt['cur_itrs']}: nothing to do")
            return {"step": ckpt["cur_itrs"], "best_miou": ckpt["best_score"]}
        if current().main:
            device = resolve_device(cfg.run.device, current())
            say(f"{name}: {describe(cfg.run.amp, record.settings['run']['amp'], device)}")
        result = train(cfg, record, resume=ckpt, init_state=init_state)
    if current().main and kind == "train":
        write_report(out, name, say)
    return result


def write_report(out: Path, name: str, say) -> None:
    """The run's page (``famix report``, without a model pass: training's end stays quick), or one line on
    why there is none: a page famix did not write in the folder, or no matplotlib. The run is saved either
    way."""
    try:
        page.run(out, say=lambda line: say(f"{name}: {line}"), model=False)
    except (ImportError, FileExistsError, ValueError) as e:
        say(f"{name}: no report page: {str(e).splitlines()[0]}")


def status(cfg: Config, fix: str = REFUSAL, kind: str = "train", inputs: dict | None = None) -> Status:
    """What :func:`run` would do with ``train.out``: new, resume (at step N), done, or refused (why)."""
    try:
        check_out(cfg)
        ckpt = open_run(Path(cfg.train.out), train_record(cfg, kind, inputs), fix)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        return Status(State.REFUSED, str(e).splitlines()[0])
    if ckpt is None:
        return Status(State.NEW)
    if finished(ckpt, cfg):
        return Status(State.DONE)
    return Status(State.RESUME, f"at step {ckpt['cur_itrs']}")
