"""``famix convert``: official FAMix checkpoints and style banks, and CLIP weights, into famix's files."""

from __future__ import annotations

from pathlib import Path

from famix.engine import convert


def run(kind: str, src: str | Path, dst: str | Path, **options) -> Path:
    """Convert ``src`` (``kind``: checkpoint | bank | clip) into ``dst``; ``options``: those of
    :func:`famix.engine.convert.run` (trust_pickle, force). Returns ``dst``."""
    convert.run(kind, str(src), str(dst), **options)
    return Path(dst)
