"""Safe file writing: every file famix writes for a user appears whole or not at all, with the permissions
the user's umask gives new files (as ``open()`` would), never the 0600 of a private temporary file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it back at once
    os.umask(mask)
    return mask


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes of ``path`` left behind (a killed run
    cannot clean up after itself); returns them. Call it where a run (re)starts, before it writes."""
    path = Path(path)
    stale = sorted(path.parent.glob(f"{_temp_prefix(path)}*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return stale


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path`` in one step.

    A crash while writing leaves any previous file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result over ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)
