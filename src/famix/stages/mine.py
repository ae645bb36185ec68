"""``famix mine``: mine a style bank into ``style.bank``, resume it, or return the finished bank."""

from __future__ import annotations

from pathlib import Path

from famix import __version__
from famix.config import Config
from famix.engine.checks import bank_normalization_entry, check_mine_inputs
from famix.engine.distributed import current
from famix.engine.mine import mine_pass, mine_record, mining_plan, source_set
from famix.engine.runs import KEY, check_same
from famix.models.build import normalization
from famix.style.bank import StyleBank

REFUSAL = "Pass another style.bank, or move that file away"


def run(cfg: Config, progress: bool = True, say=print, fix: str = REFUSAL) -> StyleBank:
    """Mine ``cfg``'s bank (inputs checked first): a finished bank with the same record is returned at
    once, an interrupted one is resumed, a bank with another record is refused naming the changes
    (``fix``: what the refusal tells the user to do, in the calling command's own options)."""
    check_mine_inputs(cfg)
    record, path = mine_record(cfg), Path(cfg.style.bank)
    dataset = source_set(cfg)
    _, batches = mining_plan(cfg, dataset)
    if path.is_file():
        bank = StyleBank.load(path)
        check_same(record, bank.metadata.get(KEY), path, fix)
        if bank.metadata.get("batches_done", 0) >= batches:
            if current().main:
                say(f"famix mine: {path} holds this bank, finished ({len(bank)} styles): nothing to do")
            return bank
    else:
        bank = None
    metadata = {KEY: record.to_dict(), "batches_done": 0, "famix_version": __version__}
    norm = normalization(cfg.model)
    metadata.update(bank_normalization_entry(norm))  # what the styles saw
    if cfg.model.classes is not None:  # a bank of the 19 trainIds says nothing more, as before label sets
        metadata["label_set"] = cfg.model.label_set().to_dict()
    return mine_pass(cfg, dataset, bank, metadata, progress)


def status(cfg: Config, fix: str = REFUSAL) -> str:
    """What :func:`run` would do with ``style.bank``: "to do", "resumes after N batches", "done" or
    "refused: ..."."""
    path = Path(cfg.style.bank)
    if not path.is_file():
        return "to do"
    try:
        bank = StyleBank.load(path)
        check_same(mine_record(cfg), bank.metadata.get(KEY), path, fix)
        _, batches = mining_plan(cfg, source_set(cfg))
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        return f"refused: {str(e).splitlines()[0]}"
    done = bank.metadata.get("batches_done", 0)
    return "done" if done >= batches else f"resumes after {done} of {batches} batches"
