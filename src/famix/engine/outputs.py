"""Where a command writes its output file: the path checked before any work starts, and the rule that
famix replaces an existing file only if it is the kind of file this command writes (else ``--force``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def check_folder(path: str | Path, option: str, given: str | Path | None = None) -> None:
    """A folder a command will write into (a run folder, an output folder): it, or its nearest existing
    parent, must be a folder famix may write in; said before any work, naming the option and the path the
    user gave (``given``, default ``path``). Missing folders are fine: they are created when written."""
    path = Path(path)
    given = path if given is None else given
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(
                    f"{option} {given}: {parent} is a file, not a folder, so nothing can be written under "
                    "it; pass a path in a folder"
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(
                    f"{option} {given}: no permission to write in the folder {parent}; pass a path in a "
                    "folder you can write to"
                )
            return


def check_output_path(path: str | Path, option: str) -> Path:
    """Refuse, in words about the path the user gave, an output *file* path famix could not write: a
    folder, a path under a file, or a folder without write permission (``option``: ``--out``, ``dst``)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder: pass the path of the file to write")
    check_folder(path.parent, option, given=path)
    return path


def check_replaceable(path: str | Path, ours: Callable[[Path], bool], what: str, force: bool) -> None:
    """Refuse to replace an existing ``path`` unless ``ours(path)`` (it is ``what``, a file this command
    writes) or ``force``: a file famix did not write for this kind of output may be someone's only copy
    (a run's resumable ``latest.pt``, a mined bank)."""
    path = Path(path)
    if force or not path.exists() or ours(path):
        return
    raise FileExistsError(
        f"{path} exists and is not {what}: famix does not replace it. Pass another path, or --force to "
        "overwrite it"
    )
