"""Models shared by name on the Hugging Face Hub: ``hf:OWNER/NAME[@REVISION]`` ids, downloaded into the
Hub's own cache (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``) and read from there offline
(``HF_HUB_OFFLINE=1``); uploads of folders written by ``famix save``. Needs ``famix[hub]``
(``huggingface_hub``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

PREFIX = "hf:"
_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(source) -> bool:
    """Whether ``source`` names a Hub model (``hf:OWNER/NAME[@REVISION]``) rather than a local path."""
    return isinstance(source, str | os.PathLike) and os.fspath(source).startswith(PREFIX)


def parse_id(source: str) -> tuple[str, str | None]:
    """``hf:OWNER/NAME[@REVISION]`` -> (``OWNER/NAME``, revision or None); a malformed id is an error."""
    source = os.fspath(source)
    repo, _, revision = source[len(PREFIX) :].partition("@")
    if not _ID.match(repo) or (revision == "" and source.endswith("@")):
        raise ValueError(
            f"{source!r} is not a Hub model id: write hf:OWNER/NAME or hf:OWNER/NAME@REVISION "
            "(e.g. hf:famix/gta5-rn50)"
        )
    return repo, revision or None


def _hub():
    try:
        import huggingface_hub
    except ImportError as e:
        raise ImportError(f'Hub models need huggingface_hub: pip install "famix[hub]" ({e})') from None
    return huggingface_hub


def download(source: str) -> Path:
    """The local folder of Hub model ``source`` (downloaded once into the Hub's cache; offline, from it)."""
    repo, revision = parse_id(source)
    hub = _hub()
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(hub.snapshot_download(repo, revision=revision))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"{source} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and cannot be downloaded "
            "(offline: HF_HUB_OFFLINE=1, or no network): download it once where the Hub is reachable (unset "
            "HF_HUB_OFFLINE), copy that cache here, or pass a local folder written by `famix save`"
        ) from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{source}: the Hub model {repo} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{source}: no Hub model {repo} (or it is private: log in with `hf auth login`)"
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
