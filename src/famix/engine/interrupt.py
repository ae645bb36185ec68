"""Stopping a long run cleanly: SIGINT (Ctrl-C) and SIGTERM ask the training loop and the mining pass to stop
at their next safe point (a step's or a batch round's end), where they save a resumable state and raise
:class:`Interrupted`; the command then says in one line what was saved and how to go on. A second Ctrl-C
stops at once (KeyboardInterrupt), as Python does.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


class Interrupted(Exception):
    """A run stopped on a signal at a safe point, after saving what resumes it (the message says what)."""


@contextlib.contextmanager
def stop_requests() -> Iterator[Callable[[], bool]]:
    """Within: SIGINT / SIGTERM set a flag instead of interrupting a step half-way (a second SIGINT raises
    KeyboardInterrupt at once). Yields a function telling whether a stop was asked. Off the main thread
    (where Python delivers no signal) nothing is installed and no stop is ever asked."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    asked: list[int] = []

    def handler(signum, frame):
        if asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        asked.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(asked)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def any_rank(asked: bool) -> bool:
    """Whether any rank was asked to stop (every rank must stop at the same step); ``asked`` as it is in one
    process. Under torchrun, every rank must call it at the same point (one small all-reduce)."""
    import torch  # here: the CLI imports this module for Interrupted, and `famix --help` imports no torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return asked
    nccl = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    flag = torch.tensor([1.0 if asked else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
