"""Mixed precision, one recipe for every stage: ``run.amp`` names the autocast dtype, used on CUDA only."""

from __future__ import annotations

import contextlib

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def amp_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``run.amp=name`` on ``device``: None off CUDA (CPU runs in fp32) or when off."""
    if name not in AMP_DTYPES:
        raise ValueError(f"run.amp={name!r}: choose one of {', '.join(AMP_DTYPES)}")
    return AMP_DTYPES[name] if device.type == "cuda" else None


def precision(name: str, device: torch.device) -> tuple[str, torch.dtype | None]:
    """(the name a run records, the autocast dtype) of ``run.amp=name`` on ``device``: the name is "off"
    where autocast does not apply (the CPU), so that records say what was computed."""
    dtype = amp_dtype(name, device)
    return (name if dtype is not None else "off"), dtype


def trained_precision(
    given: str | None, trained: str, device: torch.device
) -> tuple[str, torch.dtype | None]:
    """One precision per trained model: :func:`precision` of ``given`` (``--amp``), else of ``trained``, the
    ``run.amp`` the model was trained (and validated) with."""
    return precision(given or trained, device)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op context when it is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
