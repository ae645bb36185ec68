"""The one owner of "is this the same run?": a run record, where it is kept, and three operations.

A :class:`RunRecord` says what decides a result: the kind of run, its settings (config sections less the
keys that never change a result: where it writes, how often it logs, the device, the loader's workers) and
the fingerprints of its input files (CLIP weights, style bank, starting checkpoint). It is kept, as a plain
dict under the key ``"run"``, in every artifact a stage writes: a checkpoint dict, a style bank's metadata,
a cached JSON result. Every stage asks the same three questions of it:

- :func:`check_same`: resume the artifact, or refuse it, naming every changed key;
- "is it finished": each artifact says so itself (a checkpoint's step, a bank's batch count);
- :func:`cached`: a JSON result keyed by the record that decides it (several keys share one file).

What a stage would do with its artifact is a :class:`Status` value (new, resume, done or refused, with a
detail), never a sentence for callers to parse.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from famix.config import DataConfig, ModelConfig, flatten
from famix.io import atomic_write
from famix.models.build import normalization
from famix.normalization import OPENAI_NORMALIZATION

KEY = "run"  # where a record lives in a checkpoint dict, a bank's metadata and a cache entry


@dataclass(frozen=True)
class RunRecord:
    """What decides a run's result. ``settings``: ``{section: {key: value}}``; ``inputs``: ``{name:
    fingerprint}`` of the files it reads (``io.file_fingerprint``, the CLIP weights' by
    ``models.clip.weights_fingerprint``: a file's hash or a tag)."""

    kind: str
    settings: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return json.loads(json.dumps({"kind": self.kind, "settings": self.settings, "inputs": self.inputs}))

    def key(self) -> str:
        """A short hash of the record (canonical JSON): the name of its cache entry."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def changes(self, stored: dict) -> list[str]:
        """``key: old -> new`` for every setting or input that differs from a stored record's."""
        old = {"kind": stored.get("kind"), **flatten(stored.get("settings", {}))}
        old.update(flatten(stored.get("inputs", {}), "input "))
        new = {"kind": self.kind, **flatten(self.settings), **flatten(self.inputs, "input ")}
        keys = sorted(set(old) | set(new))
        unset = "(unset)"
        return [
            f"{k}: {old.get(k, unset)!r} -> {new.get(k, unset)!r}" for k in keys if old.get(k) != new.get(k)
        ]


class State(enum.Enum):
    """What a stage would do with its artifact."""

    NEW = "to do"  # nothing there yet
    RESUME = "resumes"  # an interrupted run of the same record: go on from it
    DONE = "done"  # a finished run of the same record: return its result
    REFUSED = "refused"  # another run's artifact (or an unreadable one): refuse


@dataclass(frozen=True)
class Status:
    """A stage's status: its :class:`State` and a detail (where a resume starts, why it is refused)."""

    state: State
    detail: str = ""

    @property
    def done(self) -> bool:
        return self.state is State.DONE

    @property
    def refused(self) -> bool:
        return self.state is State.REFUSED

    def __str__(self) -> str:
        """For people: "to do", "resumes at step 40", "done", "refused: <why>"."""
        if self.state is State.REFUSED:
            return f"refused: {self.detail}"
        return f"{self.state.value} {self.detail}".strip()


def normalization_settings(model: ModelConfig) -> dict:
    """A run record's entries for its input normalisation (resolved): none for OpenAI's, as in the records
    of famix before it knew others (they stay valid), else ``{"mean": [...], "std": [...]}``."""
    n = normalization(model)
    return {} if n == OPENAI_NORMALIZATION else {"mean": list(n.mean), "std": list(n.std)}


def source_settings(data: DataConfig) -> dict:
    """A run record's entries for its training sources: ``{"train": spec}`` for one source (a list of one
    spec is that spec, and its weight changes nothing: the records of famix before several sources stay
    valid), else ``{"train": [specs], "train_weights": weights or None}``."""
    specs = data.sources
    if len(specs) == 1:
        return {"train": specs[0]}
    return {"train": specs, "train_weights": data.train_weights}


def check_same(record: RunRecord, stored: dict | None, where: str | Path, fix: str) -> None:
    """Refuse to resume or reuse ``where`` unless its stored record (``artifact["run"]``) equals ``record``;
    the error names every changed key and says what to do (``fix``: the command's own option)."""
    if stored is None:
        raise FileExistsError(
            f"{where} was not written by this version of famix (it has no run record), so it cannot be "
            f"resumed or reused: {fix}"
        )
    changed = record.changes(stored)
    if changed:
        raise FileExistsError(f"{where} holds a run made with other settings: {'; '.join(changed)}. {fix}")


def lookup(path: str | Path, record: RunRecord) -> dict | None:
    """The result cached for ``record`` in the JSON file ``path`` (see :func:`cached`), or None."""
    path = Path(path)
    entry = json.loads(path.read_text()).get(record.key()) if path.is_file() else None
    return entry["result"] if entry is not None and not record.changes(entry[KEY]) else None


def cached(
    path: str | Path,
    record: RunRecord,
    compute: Callable[[], dict],
    say=print,
    write: bool = True,
    valid: Callable[[dict], bool] = lambda result: True,
) -> dict:
    """The result ``compute()`` gives for ``record``, cached in the JSON file ``path`` (entries keyed by
    :meth:`RunRecord.key`, so a change of what decides the result adds an entry and never mixes them).
    ``say``: told when a cached result is reused; ``write``: False on ranks other than 0; ``valid``: whether
    a cached result still holds (e.g. the files it lists still exist)."""
    path = Path(path)
    result = lookup(path, record)
    if result is not None and valid(result):
        say(f"reusing the cached result in {path}")
        return result
    result = compute()
    if not write:
        return result
    entries = json.loads(path.read_text()) if path.is_file() else {}  # with what others added meanwhile
    entries[record.key()] = {KEY: record.to_dict(), "result": result}
    text = json.dumps(entries, indent=1, sort_keys=True)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))
    return result


LOCK = ".famix.lock"  # in a run folder (a file's lock: .<name>.famix.lock beside it)


def lock_path(target: str | Path, file: bool = False) -> Path:
    """The lock file of a run folder, or (``file``) of a single output file such as a style bank."""
    target = Path(target)
    return target.with_name(f".{target.name}{LOCK}") if file else target / LOCK


@contextlib.contextmanager
def held(target: str | Path, option: str, file: bool = False, enabled: bool = True) -> Iterator[None]:
    """Hold ``target`` (a run folder or an output file) while a command writes it: a second famix command
    on the same target refuses at once, naming the first one's process (``option``: how the user named the
    target, e.g. ``train.out``); a lock left by a process that no longer runs (killed) is taken over.
    ``enabled``: False on ranks other than 0 under torchrun (rank 0 holds it for the run)."""
    if not enabled:
        yield
        return
    lock = lock_path(target, file)
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(3):  # a stale lock removed by another process between our tries: try again
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None:
                raise FileExistsError(
                    f"{option} {target} is being written by another famix command ({holder}): wait for it "
                    f"to finish, or pass another {option}"
                ) from None
            with contextlib.suppress(FileNotFoundError):  # its process is gone: a stale lock
                lock.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        break
    else:
        raise FileExistsError(
            f"{option} {target}: could not take its lock {lock}; remove it if no famix runs"
        )
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError, OSError):
            if lock.read_text().strip() == me:
                lock.unlink()


def _holder(lock: Path) -> str | None:
    """Who holds ``lock`` ("pid N on HOST"), None when its process no longer runs (a stale lock). A lock of
    another host cannot be checked: it is taken as held."""
    try:
        pid, host = lock.read_text().split()
        pid = int(pid)
    except (OSError, ValueError):
        return None  # unreadable or half-written by a killed process
    if host != socket.gethostname():
        return f"pid {pid} on {host}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # another user's process: it runs
    return f"pid {pid}"
