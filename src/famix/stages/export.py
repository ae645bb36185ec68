"""``famix export``: a checkpoint's segmenter as ONNX, a torch.export program or TorchScript, checked
against the eager model before the file is written."""

from __future__ import annotations

from pathlib import Path

from famix.engine.export import ExportCheck, export_checkpoint, parse_size


def run(checkpoint: str | Path, fmt: str, size: str | tuple[int, int], **options) -> tuple[Path, ExportCheck]:
    """Export ``checkpoint`` in format ``fmt`` at ``size`` (``"HxW"`` or a pair); ``options``: those of
    :func:`famix.engine.export.export_checkpoint` (dynamic, out, atol, min_agreement, force). Returns the
    file written and the check it passed."""
    size = parse_size(size) if isinstance(size, str) else tuple(size)
    return export_checkpoint(checkpoint, fmt, size, **options)
