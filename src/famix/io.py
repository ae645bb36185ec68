"""Safe file writing: every file famix writes for a user appears whole or not at all, with the permissions
the user's umask gives new files (as ``open()`` would), never the 0600 of a private temporary file; and
safetensors files are byte-reproducible (the same tensors and metadata give the same bytes). And the one
way famix identifies a file by its content: :func:`file_fingerprint`."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file


def file_fingerprint(path: str | os.PathLike | None) -> str | None:
    """``"sha256:<16 hex>"`` of a file's bytes (None for None): identifies a file (CLIP weights, a bank, a
    checkpoint) by content, so moving or renaming it does not change a run's identity; rewriting it does."""
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"sha256:{h.hexdigest()[:16]}"


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
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as e:  # said of the file asked for, not of the temporary name
        raise type(e)(e.errno, e.strerror, str(path)) from e
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        raise _about(e, path, Path(tmp)) from e
    except RuntimeError as e:  # torch.save reports a full disk as a RuntimeError of its zip writer
        if _full(path.parent):
            raise _about(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path, Path(tmp)) from e
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def check_space(path: str | os.PathLike, needed: int) -> None:
    """Refuse, before writing, a file of about ``needed`` bytes that the disk holding ``path`` cannot take
    (some writers, TorchScript's among them, abort the process on a full disk instead of raising)."""
    folder = Path(path).parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"the disk holding {Path(path).parent} has {_size(free)} free, and {path} needs about "
            f"{_size(needed)}: free some space, or pass a path on another disk",
        )


def _full(folder: Path) -> bool:
    """Whether the file system holding ``folder`` has (almost) no space left."""
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def _about(error: OSError, path: Path, tmp: Path) -> OSError:
    """``error`` said of ``path``, the file the user asked for, never of the hidden temporary file it was
    written to; a full disk in one line naming the folder and the space left."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
        written = tmp.stat().st_size if tmp.is_file() else 0
        return OSError(
            error.errno,
            f"the disk holding {path.parent} is full ({_size(free)} free): {path} was not written (about "
            f"{_size(written)} were written before the disk filled; it needs more). Free some space, or pass "
            "a path on another disk",
        )
    if error.filename in (str(tmp), tmp) or error.filename2 in (str(tmp), tmp):
        return type(error)(error.errno, error.strerror, str(path))
    return error


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB" if n >= 1 << 20 else f"{n / 1024:.0f} KB"


def atomic_link(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Make ``dst`` the same file as ``src`` (a hard link; a copy where the file system has none), replacing
    any previous ``dst`` in one step: two names, one stored file."""
    src, dst = Path(src), Path(dst)
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here (some network and FAT file systems)
            shutil.copyfile(src, tmp)
    return dst


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result over ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``tensors`` (contiguous) and string ``metadata`` to the safetensors file ``path``, atomically and
    byte-reproducibly: two runs that save the same tensors and metadata write the same bytes.

    safetensors orders the header's keys by a per-process hash (the metadata's differ from run to run), so
    the header is rewritten as canonical JSON: keys sorted at every level, no spaces, padded with spaces to a
    multiple of 8 bytes as the format requires. Data offsets count from the end of the header, so the data
    bytes stay as written.
    """

    def write(tmp: Path) -> None:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata) if metadata is not None else None)
        _canonicalize_header(tmp)

    return atomic_write(path, write)


def _canonicalize_header(path: Path) -> None:
    with open(path, "r+b") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        text += b" " * (-len(text) % 8)
        if len(text) == size:  # the usual case: same JSON, other key order
            f.seek(8)
            f.write(text)
            return
        # A length change (another writer's spacing or escapes): copy the data after the new header. The
        # name ends in .tmp so that remove_stale_temps finds it if this is killed.
        rewritten = path.with_name(path.name + ".header.tmp")
        with open(rewritten, "wb") as out:
            out.write(struct.pack("<Q", len(text)) + text)
            f.seek(8 + size)
            shutil.copyfileobj(f, out)
    os.replace(rewritten, path)
