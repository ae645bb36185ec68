"""``famix save`` and ``famix push``: a trained model as a folder to share (weights in safetensors, config,
model card with the model's evaluations, optionally the style bank; no path of this machine in any of them:
:mod:`famix.engine.pretrained`), and its upload to the Hugging Face Hub, with a card written for the model
there, from where ``famix.load("hf:OWNER/NAME")`` and every command that takes a checkpoint load it by name.

A model's evaluations are those of its weights: the ``famix eval`` results files beside its checkpoint (or the
ones its saved folder lists) and the entries of its evaluation cache made with the same weights, whether by
``famix eval`` or by ``famix.evaluate`` / ``Segmenter.evaluate`` from Python."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from famix.engine import hub, pretrained
from famix.engine.checkpoint import load_checkpoint, state_fingerprint
from famix.engine.distributed import single_process
from famix.engine.runs import KEY
from famix.io import atomic_write, file_fingerprint
from famix.version import __version__

OWN_BANK = "auto"  # --bank without a path: the bank the checkpoint's config names
_NOT_UPLOADED = (".git", ".cache")  # what huggingface_hub's upload_folder leaves out too


def _bank(ckpt: dict, bank: str | None, where: Path | None) -> Path | None:
    """The style bank to include (None: none): ``OWN_BANK`` is the training config's ``style.bank`` (a saved
    folder's own ``bank.safetensors``), which must be the file the run record says the model was trained
    with, or the copy of it a saved folder holds (its ``config.json`` says which)."""
    if bank is None:
        return None
    trained_with = (ckpt.get(KEY) or {}).get("inputs", {}).get("bank")
    copy = ((ckpt.get("pretrained") or {}).get("famix") or {}).get("bank") or {}
    if bank == OWN_BANK:
        if not trained_with:
            raise ValueError("--bank: this model was trained without a style bank (or its record names none)")
        own = where / pretrained.BANK if where is not None and where.is_dir() and copy else None
        path = own or Path(ckpt.get("config", {}).get("style", {}).get("bank") or "")
    else:
        path = Path(bank)
    if not path.is_file():
        raise FileNotFoundError(f"--bank: style bank {path} not found: pass its path (--bank PATH)")
    same = {trained_with} | ({copy.get("fingerprint")} if copy.get("copy_of") == trained_with else set())
    if trained_with and file_fingerprint(path) not in same:
        raise ValueError(
            f"--bank: {path} is not the bank this model was trained with (its content differs from the run "
            "record's): pass the bank it was trained with, or leave --bank out"
        )
    return path


def _weights_id(ckpt: dict) -> str:
    """The content fingerprint of a checkpoint dict's weights and config (``checkpoint.state_fingerprint``:
    what ``famix.evaluate`` keys a loaded model's evaluations by)."""
    state = {k.removeprefix("module."): v for k, v in ckpt["model_state"].items()}
    return state_fingerprint(state, ckpt.get("config", {}))


def evaluations(ckpt: dict, source, read: bool) -> list[dict]:
    """The evaluation rows of the weights ``ckpt`` holds (see the module's docstring). ``source``: the file,
    folder or Hub id it came from (None: none, so no evaluations); ``read``: ``ckpt`` is ``source`` as read,
    else (a loaded model's current weights) the file's own evaluations count only if its weights are these."""
    if source is None:
        return []
    own = _weights_id(ckpt)
    same = read or _weights_id(load_checkpoint(source)) == own
    ids = {own, pretrained.fingerprint(source)} if same else {own}
    names = pretrained.model_config(ckpt).labels.names
    rows = pretrained.cached_evaluations(pretrained.eval_cache_path(source), ids, names)
    if same:
        where = pretrained.resolve(source)
        listed = (ckpt.get("pretrained") or {}).get("evaluations", [])
        rows += pretrained.evaluations(where) if where.is_file() else pretrained.stored_rows(listed)
    return rows


def save(
    checkpoint: str | Path | dict,
    folder: str | Path,
    bank: str | None = None,
    force: bool = False,
    say=print,
    source: str | Path | None = None,
    repo: str | None = None,
    revision: str | None = None,
    space: bool = False,
) -> Path:
    """Save ``checkpoint`` (a file, a saved folder, a Hub id, or a checkpoint dict read from ``source``) as a
    model folder; returns the folder. Its model card lists the model's evaluations; ``repo`` (OWNER/NAME, at
    ``revision``): the card is written for that Hub model (``famix push``), named after it. ``space``: the
    folder is also a Hugging Face Space serving ``famix app`` for the model (:func:`space_files`)."""
    single_process("famix save", "every rank would write the same files")
    read = not isinstance(checkpoint, dict)
    if read:
        ckpt, source = load_checkpoint(checkpoint), checkpoint
    else:
        ckpt = checkpoint
    rows = evaluations(ckpt, source, read)
    bank_path = _bank(ckpt, bank, pretrained.resolve(source) if source is not None else None)
    name = repo.split("/")[1] if repo else Path(folder).resolve().name
    extra = space_files(ckpt) if space else {}
    for file, text in extra.items():  # a file of the user's (an edited app.py) is never replaced
        path = Path(folder) / file
        if path.is_file() and path.read_text() != text and not force:
            raise FileExistsError(
                f"{path} is not the one famix save --space writes (edited, or someone else's): famix does "
                "not replace it. Move it away, or pass --force to replace it"
            )
    meta = space_metadata(name) if space else None
    out = pretrained.write_folder(ckpt, folder, name, rows, bank_path, force, repo, revision, meta)
    for file, text in extra.items():
        atomic_write(out / file, lambda tmp, text=text: tmp.write_text(text))
    what = " and a Space's app.py, requirements.txt" if space else ""
    say(f"famix save: wrote {out} ({len(rows)} evaluation(s) in its model card{what})")
    return out


def space_files(ckpt: dict) -> dict[str, str]:
    """{file: text} of a Space serving ``famix app`` for the saved model beside them: ``app.py`` (the page,
    on the address the Space sets; the conditions' CLIP: the model's weights by their open_clip tag, the
    package's for its tiny CLIPs) and ``requirements.txt`` (famix with its app extra, this version)."""
    weights = ((ckpt.get("config") or {}).get("model") or {}).get("weights")
    tag = isinstance(weights, str) and weights and not any(c in weights for c in "/\\.")
    app = (
        '"""A page to try this model (famix app), as a Hugging Face Space: written by `famix save --space`.\n'
        "Here: `python app.py`; on a Space it serves on the address the Space sets (GRADIO_SERVER_NAME).\n"
        'The adapt button needs the model\'s source images (the miniature world\'s are in famix)."""\n'
        "\nfrom pathlib import Path\n\nimport famix\n\n"
        f"famix.app(Path(__file__).parent{f', weights={weights!r}' if tag else ''}).launch()\n"
    )
    requirements = f"famix[app]=={__version__}\n"
    return {pretrained.SPACE_APP: app, pretrained.SPACE_REQUIREMENTS: requirements}


def space_metadata(name: str) -> dict:
    """A Space's configuration fields in the card's metadata (the Hub reads them from README.md)."""
    try:
        import gradio

        version = {"sdk_version": gradio.__version__}
    except ImportError:
        version = {}
    return {"title": name, "sdk": "gradio", **version, "app_file": pretrained.SPACE_APP, "pinned": False}


def _famix_file(name: str) -> bool:
    """Whether a file of a saved folder is famix's (its files, their temporaries, locks) or one that uploads
    leave out."""
    ours = name in pretrained.FILES or name.startswith(".famix") or name in _NOT_UPLOADED
    return ours or any(name.startswith(f".{n}.") for n in pretrained.FILES)


def _card_edited(folder: Path) -> bool:
    """Whether a saved folder's model card was edited since famix wrote it (pushed as it is, then)."""
    written = (pretrained.read_folder(folder)["pretrained"].get("famix") or {}).get("card")
    card = folder / pretrained.CARD
    return card.is_file() and written is not None and file_fingerprint(card) != written


def push(
    checkpoint: str | Path,
    repo: str,
    private: bool = False,
    revision: str | None = None,
    bank: str | None = None,
    say=print,
) -> str:
    """Upload ``checkpoint`` to the Hub as ``repo`` (OWNER/NAME, or ``hf:`` / ``hf-hub:OWNER/NAME``): saved
    (into a temporary folder) with its model card written for ``repo``; a saved folder keeps its bank and
    its other files, and a card edited by hand is uploaded as it is. Returns the model's URL."""
    single_process("famix push", "every rank would upload the same files")
    repo, given = hub.parse_id(repo)
    if given is not None and revision not in (None, given):
        raise ValueError(f"--revision {revision} and the id's @{given} differ: give one")
    revision = revision or given
    folder = Path(checkpoint) if pretrained.is_folder(checkpoint) else None
    if folder is not None and bank is None and _card_edited(folder):  # reads it: a non-model folder refused
        url = hub.upload(folder, repo, private, revision)
        say(f"famix push: {url} (its model card as edited, not rewritten for {repo})")
        return url
    with tempfile.TemporaryDirectory(prefix="famix-push-") as tmp:
        if folder is not None and bank is None and (folder / pretrained.BANK).is_file():
            bank = str(folder / pretrained.BANK)
        out = save(checkpoint, Path(tmp) / repo.split("/")[1], bank, say=lambda _: None, repo=repo,
                   revision=revision)  # fmt: skip
        for extra in folder.iterdir() if folder is not None else []:  # e.g. a Space's app.py: kept
            if not _famix_file(extra.name):
                copy = shutil.copytree if extra.is_dir() else shutil.copy2
                copy(extra, out / extra.name)
        url = hub.upload(out, repo, private, revision)
    say(f"famix push: {url}")
    return url
