"""Models shared by name on the Hugging Face Hub, downloaded into the Hub's own cache (``HF_HUB_CACHE``,
default ``~/.cache/huggingface/hub``) and read from there offline (``HF_HUB_OFFLINE=1``); uploads of folders
written by ``famix save``. Needs ``famix[hub]`` (``huggingface_hub``).

A Hub id is written ``hf:OWNER/NAME[@REVISION]``, or ``hf-hub:OWNER/NAME[@REVISION]`` (timm's and open_clip's
spelling), or bare ``OWNER/NAME[@REVISION]`` where that is unambiguous: a string (not a ``Path``) naming no
existing file or folder, matching the id pattern and not ending in a model file's suffix (``.pt``, ``.onnx``,
...). A bare id that is also a local path is that path: local wins."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

PREFIX = "hf:"
PREFIXES = (PREFIX, "hf-hub:")
_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# names that are files famix reads, never a Hub model: a missing `runs/x/best.pt` stays a missing file
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".onnx", ".pt2", ".json", ".yaml", ".yml")


def _prefix(text: str) -> str:
    return next((p for p in PREFIXES if text.startswith(p)), "")


def is_bare_id(source) -> bool:
    """Whether ``source`` is a bare ``OWNER/NAME[@REVISION]`` Hub id: a string that is no local path, matches
    the id pattern and names no model file."""
    if not isinstance(source, str) or _prefix(source) or os.path.exists(source):
        return False
    repo, _, revision = source.partition("@")
    return bool(_ID.match(repo)) and not repo.lower().endswith(_FILE_SUFFIXES) and "@" not in revision


def is_hub_id(source) -> bool:
    """Whether ``source`` names a Hub model (``hf:`` / ``hf-hub:OWNER/NAME[@REVISION]``, or a bare id where
    unambiguous: :func:`is_bare_id`) rather than a local path."""
    if not isinstance(source, str | os.PathLike):
        return False
    return bool(_prefix(os.fspath(source))) or is_bare_id(source)


def parse_id(source: str) -> tuple[str, str | None]:
    """A Hub id in any spelling -> (``OWNER/NAME``, revision or None); a malformed id is an error."""
    source = os.fspath(source)
    repo, _, revision = source[len(_prefix(source)) :].partition("@")
    if not _ID.match(repo) or (revision == "" and source.endswith("@")):
        raise ValueError(
            f"{source!r} is not a Hub model id: write hf:OWNER/NAME or hf:OWNER/NAME@REVISION (e.g. "
            "hf:famix/gta5-rn50; hf-hub:OWNER/NAME and a bare OWNER/NAME name the same model)"
        )
    return repo, revision or None


def _hub():
    try:
        import huggingface_hub
    except ImportError as e:
        raise ImportError(f'Hub models need huggingface_hub: pip install "famix[hub]" ({e})') from None
    return huggingface_hub


def download(source: str, files: Sequence[str] | None = None) -> Path:
    """The local folder of Hub model ``source`` (downloaded once into the Hub's cache; offline, from it):
    only ``files`` (names or glob patterns; None: the whole repository)."""
    repo, revision = parse_id(source)
    hub = _hub()
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    # a bare id names no local path either: say so, in case a path was meant
    what = f"{source} (no such local path; read as a Hub model id)" if is_bare_id(source) else source
    try:
        patterns = list(files) if files is not None else None
        return Path(hub.snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"{what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and cannot be downloaded "
            "(offline: HF_HUB_OFFLINE=1, or no network): download it once where the Hub is reachable (unset "
            "HF_HUB_OFFLINE), copy that cache here, or pass a local folder written by `famix save`"
        ) from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{what}: the Hub model {repo} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{what}: no Hub model {repo} (or it is private: log in with `hf auth login`)"
        ) from None


def upload(folder: Path, repo: str, private: bool = False, revision: str | None = None) -> str:
    """Upload a ``famix save`` folder as Hub model ``repo`` (created if needed); returns its URL."""
    hub = _hub()
    api = hub.HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        if revision is not None:
            api.create_branch(repo, branch=revision, exist_ok=True)
        api.upload_folder(
            repo_id=repo, folder_path=str(folder), revision=revision, commit_message="famix push"
        )
    except Exception as e:  # no network (httpx's ConnectError), offline mode, a refused login: one line
        if isinstance(e, hub.errors.HfHubHTTPError) and getattr(e, "response", None) is not None:
            first = str(e).splitlines()[0]
            raise OSError(f"the Hugging Face Hub refused the upload to {repo}: {first}") from e
        raise OSError(
            f"cannot reach the Hugging Face Hub to upload {repo} ({type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0][:200]}): famix push needs the network (and a login: "
            "`hf auth login`); HF_HUB_OFFLINE=1 keeps famix off the network for everything else"
        ) from e
    return f"https://huggingface.co/{repo}" + (f"/tree/{revision}" if revision else "")
