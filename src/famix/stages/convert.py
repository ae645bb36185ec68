"""``famix convert``: official FAMix checkpoints and style banks, and CLIP weights, into famix's files.

A conversion is a function of its source file alone: when ``dst`` already holds what converting ``src``
gives (the same tensors and metadata), the command says so and writes nothing."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from famix.engine import convert
from famix.engine.checkpoint import load_checkpoint
from famix.engine.distributed import single_process


def _same(a, b) -> bool:
    """Equal nested containers of tensors and plain values (tensors: same dtype, shape and values)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _content(kind: str, path: Path):
    if kind == "checkpoint":
        return load_checkpoint(path)
    return load_file(str(path)), path.read_bytes()[: 8 + int.from_bytes(path.read_bytes()[:8], "little")]


def run(
    kind: str, src: str | Path, dst: str | Path, trust_pickle: bool = False, force: bool = False, say=print
) -> Path:
    """Convert ``src`` (``kind``: checkpoint | bank | clip) into ``dst`` (replaced only if this conversion
    wrote it, or ``force``); returns ``dst``. ``dst`` already holding this conversion is left as it is."""
    single_process("famix convert", "every rank would write the same file")
    dst = Path(dst)
    if dst.is_file():
        with tempfile.TemporaryDirectory() as folder:
            fresh = Path(folder) / dst.name
            convert.run(kind, str(src), str(fresh), trust_pickle=trust_pickle)
            try:
                same = _same(_content(kind, fresh), _content(kind, dst))
            except (ValueError, OSError, RuntimeError):  # dst is no file of this kind
                same = False
        if same:
            say(f"famix convert: {dst} holds this conversion of {src} already: nothing to do")
            return dst
    convert.run(kind, str(src), str(dst), trust_pickle=trust_pickle, force=force)
    return dst
