"""Which table of bit-exact pins applies to this CPU: torch's CPU kernels round differently with the
vector instructions they use (and, for the same ones, may with the vendor's BLAS paths), so each table is
recorded with the machine it was computed on, and a test on another machine skips rather than compares.
The pins were computed with torch's default of 2 threads on those 2-core machines; a reduction split over
another number of threads rounds differently, so a pin test runs with :data:`PIN_THREADS` (the
``pin_threads`` fixture of conftest.py), whatever OMP_NUM_THREADS says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

PIN_THREADS = 2


def cpu_vendor() -> str | None:
    """The CPU vendor as /proc/cpuinfo names it (GenuineIntel, AuthenticAMD), None where unknown."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("vendor_id")), None)


def pins_for(tables: dict[tuple[str, str | None], dict]) -> dict:
    """The pins recorded for this machine: ``tables`` maps (torch CPU capability, vendor or None for any)
    to pins, the first entry that fits wins (a vendor's entry before a (capability, None) one); no entry for
    this machine skips the calling test, naming it."""
    capability, vendor = torch.backends.cpu.get_cpu_capability(), cpu_vendor()
    for (cap, ven), pins in tables.items():
        if cap == capability and ven in (None, vendor):
            return pins
    pytest.skip(f"no pins computed on a {capability} {vendor} CPU")
