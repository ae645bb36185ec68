"""``famix export``: a checkpoint's segmenter as ONNX, a torch.export program or TorchScript, checked
against the eager model before the file is written. The file's metadata keeps the export's run record (the
checkpoint's content, format, size, tolerances): the same export again finds it and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

from famix.engine import pretrained
from famix.engine.distributed import single_process
from famix.engine.export import (
    ATOL,
    MIN_AGREEMENT,
    ExportCheck,
    default_output,
    export_checkpoint,
    parse_size,
)
from famix.engine.exported import read_metadata
from famix.engine.runs import RunRecord


def run(
    checkpoint: str | Path,
    fmt: str,
    size: str | tuple[int, int],
    dynamic: bool = False,
    out: str | Path | None = None,
    atol: float = ATOL,
    min_agreement: float = MIN_AGREEMENT,
    force: bool = False,
    say=print,
) -> tuple[Path, ExportCheck | None]:
    """Export ``checkpoint`` in format ``fmt`` at ``size`` (``"HxW"`` or a pair) to ``out`` (default:
    beside the checkpoint); returns the file and the check it passed (None: the file already held this
    export, nothing was written)."""
    single_process("famix export", "every rank would write the same file")
    size = parse_size(size) if isinstance(size, str) else tuple(size)
    out = Path(out) if out is not None else default_output(pretrained.base_path(checkpoint), fmt)
    settings = {
        "format": fmt,
        "size": list(size),
        "dynamic": dynamic,
        "atol": atol,
        "min_agreement": min_agreement,
    }
    record = RunRecord("export", settings, {"checkpoint": pretrained.fingerprint(checkpoint)})
    meta = read_metadata(out, fmt) if out.is_file() else None
    if meta is not None and "run" in meta and not record.changes(json.loads(meta["run"])):
        say(f"famix export: {out} holds this export of {checkpoint} already: nothing to do")
        return out, None
    return export_checkpoint(
        checkpoint, fmt, size, dynamic, out, atol, min_agreement, force, record=record.to_dict()
    )
