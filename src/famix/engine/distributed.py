"""torchrun integration: one process-group session per command (:func:`session`), rank helpers.

``torchrun`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; a command
joins the group once, when it starts (``session``), and leaves it when it ends. Stages never join or leave
it; they ask :func:`current` which rank they are. The rendezvous (every rank finding the others) waits at
most ``RENDEZVOUS_TIMEOUT_S`` seconds (environment ``FAMIX_RENDEZVOUS_TIMEOUT``), then fails with one line
instead of torch's silent 30-minute wait; collectives afterwards keep torch's long timeout.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

RENDEZVOUS_TIMEOUT_S = 120
_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def rendezvous_timeout() -> int:
    """Seconds the rendezvous waits: ``FAMIX_RENDEZVOUS_TIMEOUT`` (a whole number of seconds), else the
    default."""
    given = os.environ.get("FAMIX_RENDEZVOUS_TIMEOUT")
    if given is None:
        return RENDEZVOUS_TIMEOUT_S
    if not given.strip().isdigit() or int(given) < 1:
        raise ValueError(
            f"FAMIX_RENDEZVOUS_TIMEOUT={given!r}: give a whole number of seconds >= 1 (default "
            f"{RENDEZVOUS_TIMEOUT_S}), or unset it"
        )
    return int(given)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _int_env(name: str, default: str | None = None) -> int:
    value = os.environ.get(name, default)
    if value is None:
        raise ValueError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but {name} is not: launch famix with torchrun "
            "(it sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), or unset WORLD_SIZE"
        )
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment {name}={value!r} is not an integer (torchrun sets it)") from None


def current() -> DistInfo:
    """This process's rank and the world size, from the environment torchrun sets (checked)."""
    world = _int_env("WORLD_SIZE", "1")
    if world <= 1:
        return DistInfo()
    rank, local = _int_env("RANK"), _int_env("LOCAL_RANK", "0")
    if not 0 <= rank < world:
        raise ValueError(f"environment RANK={rank} is not in 0..{world - 1} (WORLD_SIZE={world})")
    return DistInfo(rank, world, local)


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[DistInfo]:
    """Join the process group for the duration of a command when launched by torchrun (NCCL when
    ``device`` resolves to CUDA, else gloo), and leave it at the end; alone, just yield rank 0 of 1."""
    info = current()
    if not info.enabled or dist.is_initialized():
        yield info
        return
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(
                f"WORLD_SIZE={info.world_size} is set but {name} is not: launch famix with torchrun"
            )
    timeout = rendezvous_timeout()
    try:
        store, rank, world = next(dist.rendezvous("env://", timeout=timedelta(seconds=timeout)))
    except (RuntimeError, dist.DistStoreError) as e:
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        raise TimeoutError(
            f"rank {info.rank} of {info.world_size}: the other processes did not join at {where} within "
            f"{timeout} s ({str(e).splitlines()[0][:200]}). Start every rank (torchrun --nproc-per-node N "
            "starts them all), or raise FAMIX_RENDEZVOUS_TIMEOUT"
        ) from None
    backend = "nccl" if resolve_device(device, info).type == "cuda" else "gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    try:
        yield info
    finally:
        dist.destroy_process_group()


def resolve_device(device: str, info: DistInfo | None = None) -> torch.device:
    """``run.device`` / ``--device`` -> a torch device: "auto" is this rank's CUDA device if there is one,
    else the CPU; "cpu", "cuda", "cuda:N" and "mps" name one. Errors say what is valid."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and info is not None and info.enabled:
        device = f"cuda:{info.local_rank}"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is visible on this machine; use cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
        torch.cuda.set_device(dev)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use cpu (or auto)")
    return dev


def require_session(info: DistInfo, what: str) -> None:
    """Under torchrun a stage needs the command's process group: say how to open it if it is missing."""
    if info.enabled and not dist.is_initialized():
        raise ValueError(
            f"{what} runs under torchrun (WORLD_SIZE={info.world_size}) outside a process group: call it "
            "inside `with famix.engine.distributed.session(device):` (the famix command does)"
        )


def single_process(command: str, why: str) -> None:
    """Under torchrun, refuse a command that runs in one process, in one line (``why``: what every rank
    would otherwise do)."""
    info = current()
    if info.enabled:
        raise ValueError(
            f"{command} runs in one process ({why}): run it without torchrun (WORLD_SIZE={info.world_size})"
        )


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
