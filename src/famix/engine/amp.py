"""Mixed precision, one rule for every stage and device: ``run.amp`` / ``--amp`` names the autocast dtype.

- ``auto``: bf16 where the device computes it natively (CUDA with bf16; a CPU with AMX or avx512_bf16),
  else off (fp32);
- ``bf16``: bf16 autocast on CUDA and on a CPU with native bf16; refused on a CPU without it (emulated bf16
  is slower than fp32 there);
- ``fp16``: CUDA only (CPUs have no fp16 units to speak of);
- ``off``: fp32.
Other devices (MPS) run in fp32. A run resolves its name once, at its start, records the result (bf16,
fp16 or off) and says it (:func:`describe`); a checkpoint is evaluated in the precision it was trained in
(:func:`trained_precision`) unless ``--amp`` says otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import platform

import torch

from famix.settings import AMP_CHOICES

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
# CPU features that compute bf16 natively (torch.cpu.get_capabilities' names), most capable first
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# features that say how fast a CPU runs fp32, bf16 and int8 (named in benchmark headers and messages)
SPEED_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512_f", "avx2")


@functools.cache
def cpu_capabilities() -> dict:
    """torch's view of this CPU: ``cpu_name`` and feature flags (``avx2``, ``avx512_bf16``, ...)."""
    try:
        return dict(torch.cpu.get_capabilities())
    except Exception:  # a build without cpuinfo, or a CPU it does not know: no native bf16 assumed
        return {}


def cpu_description() -> str:
    """``"AMD EPYC (avx512_bf16, avx512_vnni, avx512_f, avx2)"``: the CPU's name and its speed flags."""
    caps = cpu_capabilities()
    flags = [f for f in SPEED_FLAGS if caps.get(f)]
    name = caps.get("cpu_name") or platform.processor() or platform.machine()
    return f"{name} ({', '.join(flags) or 'none of ' + ', '.join(SPEED_FLAGS)})"


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: CUDA with bf16 support, or a CPU with AMX or avx512_bf16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        caps = cpu_capabilities()
        return any(caps.get(f) for f in BF16_FLAGS)
    return False


def int8_dot_product() -> bool:
    """Whether this CPU multiplies uint8 x int8 with a 32-bit accumulating dot product (VNNI, AMX): without
    it ONNX Runtime's int8 kernels saturate 16-bit sums, and int8 weights are better kept to 7 bits."""
    caps = cpu_capabilities()
    return any(caps.get(f) for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def resolve(name: str, device: torch.device, *, fallback: bool = False) -> str:
    """The precision ``run.amp=name`` computes in on ``device``: "bf16", "fp16" or "off" (fp32).

    A precision the device cannot compute natively (bf16 on a CPU without it, fp16 on a CPU) raises a
    ValueError saying what to pass instead, or, with ``fallback`` (a checkpoint's own precision, not the
    user's choice), gives "off"."""
    if name not in AMP_CHOICES:
        raise ValueError(f"run.amp={name!r}: choose one of {', '.join(AMP_CHOICES)}")
    if name == "auto":
        return "bf16" if native_bf16(device) else "off"
    if name == "off" or device.type == "cuda":
        return name
    if device.type != "cpu":
        return "off"  # MPS and others: fp32, as before
    if name == "bf16" and native_bf16(device):
        return name
    if fallback:
        return "off"
    why = (
        f"this CPU, {cpu_description()}, has no native bf16 (AMX or avx512_bf16)"
        if name == "bf16"
        else "fp16 autocast is for CUDA"
    )
    raise ValueError(f"run.amp={name} (--amp {name}): {why}; pass auto or off")


def amp_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``run.amp=name`` on ``device`` (None: fp32), as :func:`resolve` decides."""
    return AMP_DTYPES[resolve(name, device)]


def precision(name: str, device: torch.device) -> tuple[str, torch.dtype | None]:
    """(the name a run records, the autocast dtype) of ``run.amp=name`` on ``device``: the name is the
    resolved one ("bf16", "fp16" or "off"), so that records say what was computed."""
    resolved = resolve(name, device)
    return resolved, AMP_DTYPES[resolved]


def trained_precision(
    given: str | None, trained: str, device: torch.device
) -> tuple[str, torch.dtype | None]:
    """One precision per trained model: :func:`precision` of ``given`` (``--amp``), else of ``trained``, the
    precision the model was trained (and validated) in, where ``device`` computes it natively (else fp32:
    a bf16 model on a CPU without bf16)."""
    if given is not None:
        return precision(given, device)
    resolved = resolve(trained, device, fallback=True)
    return resolved, AMP_DTYPES[resolved]


def describe(name: str, resolved: str, device: torch.device) -> str:
    """One line for a run's start: ``"precision: bf16 (run.amp=auto) on AMD EPYC (avx512_bf16, ...)"``."""
    where = f"CPU {cpu_description()}" if device.type == "cpu" else str(device)
    return f"precision: {'fp32' if resolved == 'off' else resolved} (run.amp={name}) on {where}"


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op context when it is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
