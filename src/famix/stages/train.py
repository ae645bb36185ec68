"""``famix train``: train a segmenter into ``train.out``, resume it, or return the finished run's result."""

from __future__ import annotations

from pathlib import Path

from famix.config import Config
from famix.engine.checks import check_train_inputs
from famix.engine.distributed import current
from famix.engine.train import finished, open_run, train, train_record

REFUSAL = "Pass another train.out, or move that folder away"


def run(cfg: Config, say=print, fix: str = REFUSAL) -> dict:
    """Train ``cfg`` (checked first) and return ``{"step", "best_miou"}``: a finished run with the same
    record returns at once, an interrupted one resumes from its ``latest.pt``, another run's is refused
    (``fix``: what the refusal tells the user to do, in the calling command's own options)."""
    check_train_inputs(cfg)
    record = train_record(cfg)
    out = Path(cfg.train.out)
    ckpt = open_run(out, record, fix)
    if finished(ckpt, cfg):
        if current().main:
            say(f"famix train: {out} holds this run, finished at step {ckpt['cur_itrs']}: nothing to do")
        return {"step": ckpt["cur_itrs"], "best_miou": ckpt["best_score"]}
    return train(cfg, record, resume=ckpt)


def status(cfg: Config, fix: str = REFUSAL) -> str:
    """What :func:`run` would do with ``train.out``: "to do", "resumes at step N", "done" or
    "refused: ..."."""
    try:
        ckpt = open_run(Path(cfg.train.out), train_record(cfg), fix)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        return f"refused: {str(e).splitlines()[0]}"
    if ckpt is None:
        return "to do"
    return "done" if finished(ckpt, cfg) else f"resumes at step {ckpt['cur_itrs']}"
