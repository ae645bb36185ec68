"""``famix save`` and ``famix push``: a trained model as a folder to share (weights in safetensors, config,
model card with the evaluations found beside the checkpoint, optionally the style bank), and its upload to
the Hugging Face Hub, from where ``famix.load("hf:OWNER/NAME")`` and every command that takes a checkpoint
load it by name."""

from __future__ import annotations

import tempfile
from pathlib import Path

from famix.engine import hub, pretrained
from famix.engine.checkpoint import load_checkpoint
from famix.engine.distributed import single_process
from famix.io import file_fingerprint

OWN_BANK = "auto"  # --bank without a path: the bank the checkpoint's config names


def _bank(ckpt: dict, bank: str | None) -> Path | None:
    """The style bank to include (None: none): ``OWN_BANK`` is the training config's ``style.bank``, which
    must be the file the run record says the model was trained with."""
    if bank is None:
        return None
    trained_with = (ckpt.get("run") or {}).get("inputs", {}).get("bank")
    path = Path(ckpt.get("config", {}).get("style", {}).get("bank") or "") if bank == OWN_BANK else Path(bank)
    if bank == OWN_BANK and not trained_with:
        raise ValueError("--bank: this model was trained without a style bank (or its record names none)")
    if not path.is_file():
        raise FileNotFoundError(f"--bank: style bank {path} not found: pass its path (--bank PATH)")
    if trained_with and file_fingerprint(path) != trained_with:
        raise ValueError(
            f"--bank: {path} is not the bank this model was trained with (its content differs from the run "
            "record's): pass the bank it was trained with, or leave --bank out"
        )
    return path


def save(
    checkpoint: str | Path | dict,
    folder: str | Path,
    bank: str | None = None,
    force: bool = False,
    say=print,
    source: str | Path | None = None,
) -> Path:
    """Save ``checkpoint`` (a file, a saved folder, a Hub id, or a checkpoint dict read from ``source``) as a
    model folder; returns the folder. The model card lists the evaluations beside a checkpoint file, or
    those a saved folder's config lists."""
    single_process("famix save", "every rank would write the same files")
    if isinstance(checkpoint, dict):
        ckpt = checkpoint
    else:
        ckpt, source = load_checkpoint(checkpoint), checkpoint
    where = pretrained.resolve(source) if source is not None else None
    if where is not None and where.is_file():
        evals = pretrained.evaluations(where)
    else:  # a saved folder (or a model with no file): the evaluations its config.json lists
        evals = ckpt.get("pretrained", {}).get("evaluations", [])
    bank_path = _bank(ckpt, bank)
    out = pretrained.write_folder(ckpt, folder, Path(folder).resolve().name, evals, bank_path, force)
    say(f"famix save: wrote {out} ({len(evals)} evaluation file(s) in its model card)")
    return out


def push(
    checkpoint: str | Path,
    repo: str,
    private: bool = False,
    revision: str | None = None,
    bank: str | None = None,
    say=print,
) -> str:
    """Upload ``checkpoint`` to the Hub as ``repo`` (OWNER/NAME): a saved folder as it is, a checkpoint
    file saved first (into a temporary folder); returns the model's URL."""
    single_process("famix push", "every rank would upload the same files")
    hub.parse_id(hub.PREFIX + repo)
    if pretrained.is_folder(checkpoint) and bank is None:
        pretrained.read_folder(checkpoint)  # a folder that is not a saved model: refused before uploading
        url = hub.upload(Path(checkpoint), repo, private, revision)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            folder = save(checkpoint, Path(tmp) / repo.split("/")[1], bank, say=lambda _: None)
            url = hub.upload(folder, repo, private, revision)
    say(f"famix push: {url}")
    return url
