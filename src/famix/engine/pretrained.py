"""Trained models as folders to share (``famix save``, ``famix.save_pretrained``; the Hub's layout):

- ``model.safetensors``: the segmenter's weights (no pickle);
- ``config.json``: the famix version and format, the resolved run config (model section with its label
  set), the label set, the input normalisation, the run record and step of the checkpoint;
- ``README.md``: a model card (Hub metadata block, backbone, training data and settings, classes, and the
  evaluations found beside the checkpoint as a results table);
- ``bank.safetensors`` when the style bank is included.

:func:`read_folder` gives back the checkpoint dict ``load_checkpoint`` returns for a ``.pt``, so every command
that takes a checkpoint takes such a folder, or a Hub id of one (``hf:OWNER/NAME``, :mod:`famix.engine.hub`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from pathlib import Path

import yaml
from safetensors.torch import load_file

from famix.config import ModelConfig, from_dict
from famix.data.specs import parse_spec
from famix.engine import hub
from famix.io import atomic_write, file_fingerprint, remove_stale_temps, save_safetensors
from famix.normalization import OPENAI_NORMALIZATION
from famix.version import __version__

FORMAT = "famix-pretrained"
WEIGHTS, CONFIG, CARD, BANK = "model.safetensors", "config.json", "README.md", "bank.safetensors"


def major(version: str) -> int:
    return int(version.split(".")[0])


def is_folder(path) -> bool:
    """Whether ``path`` is a folder (a ``famix save`` folder, or one that should be)."""
    return not hub.is_hub_id(path) and Path(path).is_dir()


def resolve(source) -> Path:
    """The local path of a model source: a Hub id is downloaded (or found in the Hub's cache)."""
    return hub.download(source) if hub.is_hub_id(source) else Path(source)


def model_config(ckpt: dict) -> ModelConfig:
    """The model a checkpoint dict was trained as: its stored ``config["model"]``, or (official FAMix files)
    the defaults: RN50, OS16, the 19 trainIds. The input normalisation is the stored ``mean`` / ``std``;
    a checkpoint storing none (official files, famix before it stored them) was trained with OpenAI's, so
    that is what it gets, whatever its CLIP weights' tag says today."""
    stored = ckpt.get("config", {}).get("model")
    cfg = from_dict(stored, ModelConfig, "model.") if stored else ModelConfig()
    if cfg.mean is None:
        cfg = dataclasses.replace(
            cfg, mean=list(OPENAI_NORMALIZATION.mean), std=list(OPENAI_NORMALIZATION.std)
        )
    return cfg


def read_folder(folder: str | Path) -> dict:
    """A ``famix save`` folder as a checkpoint dict: ``model_state``, ``config``, ``run``, ``cur_itrs``, plus
    ``pretrained`` (its ``config.json``). Errors name the folder and what is wrong."""
    folder = Path(folder)
    config = folder / CONFIG
    if not config.is_file():
        raise FileNotFoundError(
            f"{folder} is a folder without {CONFIG}: pass a folder written by `famix save` (or famix."
            "save_pretrained), a checkpoint file, or a Hub id hf:OWNER/NAME"
        )
    try:
        meta = json.loads(config.read_text())
        info = meta["famix"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{config} is not a famix model config ({e}): write the folder with `famix save`"
        ) from None
    if info.get("format") != FORMAT:
        raise ValueError(f"{config} is not a famix model folder's config (format {info.get('format')!r})")
    if major(info.get("version", "0")) != major(__version__):
        raise ValueError(
            f"{config} was written by famix {info.get('version')}, another major version than this famix "
            f"{__version__}: load it with famix {major(info.get('version', '0'))}.x, or re-save the "
            "checkpoint with this version"
        )
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has {CONFIG} but no {WEIGHTS}: copy the folder whole")
    try:
        state = load_file(str(weights))
    except Exception as e:
        raise ValueError(
            f"cannot read {weights} ({e}): it is truncated or not safetensors; copy it again"
        ) from e
    return {
        "model_state": state,
        "config": meta["config"],
        "run": meta.get("run"),
        "cur_itrs": meta.get("steps", 0),
        "best_score": meta.get("best_score", 0.0),
        "pretrained": meta,
    }


def fingerprint(source) -> str:
    """A model source's content fingerprint: a checkpoint file's hash, a folder's weights and config."""
    path = resolve(source)
    if path.is_dir():
        return f"{file_fingerprint(path / WEIGHTS)}+{file_fingerprint(path / CONFIG)}"
    return file_fingerprint(path)


def base_path(source) -> Path:
    """Where files about a model go by default: a checkpoint's own path (results beside it); for a folder or
    a Hub id, a name in the working folder (their folders may be read-only caches)."""
    if hub.is_hub_id(source):
        return Path.cwd() / hub.parse_id(source)[0].replace("/", "--")
    path = Path(source)
    return Path.cwd() / path.resolve().name if path.is_dir() else path


def evaluations(checkpoint: Path) -> list[dict]:
    """The ``famix eval`` result files beside a checkpoint (``<stem>.eval.*.json``), read."""
    found = []
    for path in sorted(checkpoint.parent.glob(f"{checkpoint.stem}.eval.*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("datasets"), dict):
            found.append({"file": path.name, **data})
    return found


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def model_card(name: str, ckpt: dict, evals: list[dict], bank: str | None) -> str:
    """The README.md of a saved model: the Hub's metadata block, then what it is and how to use it."""
    cfg = ckpt.get("config", {})
    model = from_dict(cfg.get("model", {}), ModelConfig, "model.")
    labels = model.labels
    data, style, train = cfg.get("data", {}), cfg.get("style", {}), cfg.get("train", {})
    results = [(spec, r.get("miou")) for e in evals for spec, r in e["datasets"].items()]
    index = [
        {
            "task": {"type": "image-segmentation"},
            "dataset": {"name": spec, "type": parse_spec(spec).written_name},
            "metrics": [{"type": "mean_iou", "value": round(miou, 2), "name": "mIoU (%)"}],
        }
        for spec, miou in results
        if miou is not None
    ]
    head = {
        "library_name": "famix",
        "pipeline_tag": "image-segmentation",
        "tags": ["famix", "semantic-segmentation", "domain-generalization", "clip"],
        **({"model-index": [{"name": name, "results": index}]} if index else {}),
    }
    lines = ["---", yaml.safe_dump(head, sort_keys=False).strip(), "---", "", f"# {name}", ""]
    lines += [
        f"A [famix](https://github.com/famix) FAMix segmenter: CLIP {model.backbone} image encoder under a "
        f"DeepLabv3+ head (output stride {model.output_stride}, freeze {model.freeze}), {labels.describe()}.",
        "",
        "## Use",
        "",
        "```python",
        "import famix",
        f'model = famix.load("hf:OWNER/{name}")  # or the folder itself',
        'labels = model.predict("street.png")  # [H, W] uint8 class indices',
        "```",
        "",
        f"`famix eval hf:OWNER/{name} --data ...` and `famix predict hf:OWNER/{name} ...` take it too.",
        "",
        "## Training",
        "",
        f"- source data: `{data.get('train', '?')}`, crop {data.get('crop', '?')}, "
        f"batch {data.get('batch_size', '?')}",
        f"- style mixing: `{style.get('mix', '?')}` (grid {style.get('grid', '?')}, "
        f"Beta({style.get('beta', '?')}))" + (f", bank {bank}" if bank else ""),
        f"- {ckpt.get('cur_itrs', '?')} of {train.get('iterations', '?')} iterations, "
        f"lr {train.get('lr', '?')}, seed {cfg.get('run', {}).get('seed', '?')}",
        "",
        "## Classes",
        "",
        "| index | name | color | ids | prompt |",
        "| --- | --- | --- | --- | --- |",
    ]
    colours = labels.colors()
    for k, c in enumerate(labels.classes):
        lines.append(f"| {k} | {c.name} | {list(map(int, colours[k]))} | {list(c.ids)} | {c.prompt} |")
    lines += ["", "## Results", ""]
    if results:
        lines += ["| data | mIoU (%) | test time | file |", "| --- | --- | --- | --- |"]
        for e in evals:
            tta = ", ".join(f"{k}={v}" for k, v in (e.get("test_time") or {}).items() if v) or "plain"
            for spec, r in e["datasets"].items():
                lines.append(f"| `{spec}` | {_pct(r.get('miou'))} | {tta} | {e['file']} |")
    else:
        lines.append("No evaluation was found beside the checkpoint (`famix eval` writes them there).")
    lines += ["", f"Saved with famix {__version__}.", ""]
    return "\n".join(lines)


def _text_fingerprint(text: str) -> str:
    """The fingerprint ``io.file_fingerprint`` gives a file holding ``text``."""
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def write_folder(
    ckpt: dict, folder: str | Path, name: str, evals: list[dict], bank: str | Path | None, force: bool
) -> Path:
    """Write a checkpoint dict as a model folder. A folder holding anything but an earlier save (a
    ``config.json`` of this format) or what a killed save left is refused unless ``force``, and so is a
    model card edited by hand since famix wrote it; files are written atomically."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file: pass a folder to save the model into")
    try:
        earlier = json.loads((folder / CONFIG).read_text())
        ours = earlier["famix"]["format"] == FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        earlier, ours = {}, False
    names = (WEIGHTS, CONFIG, CARD, BANK)
    if folder.is_dir() and not ours and not force:
        # a save killed before its config.json: only its own files, whole or half-written (hidden temps)
        partial = [p.name for p in folder.iterdir()]
        if partial and all(n in names or any(n.startswith(f".{m}.") for m in names) for n in partial):
            ours = True
        elif partial:
            raise FileExistsError(
                f"{folder} is not empty and was not written by `famix save`: pass another folder (or --force "
                "to write into it)"
            )
    card = model_card(name, ckpt, evals, Path(bank).name if bank else None)
    written_card = (earlier.get("famix") or {}).get("card")  # the fingerprint of the card famix wrote
    edited = (folder / CARD).is_file() and written_card not in (None, file_fingerprint(folder / CARD))
    if edited and ours and not force and (folder / CARD).read_bytes() != card.encode():
        raise FileExistsError(
            f"{folder / CARD} was edited since `famix save` wrote it: famix does not replace it. Move it "
            "away (your text is kept), or pass --force to replace it"
        )
    for n in names:
        remove_stale_temps(folder / n)  # what a killed save left behind
    folder.mkdir(parents=True, exist_ok=True)
    state = {k.removeprefix("module."): v.detach().cpu().contiguous() for k, v in ckpt["model_state"].items()}
    save_safetensors(state, folder / WEIGHTS, {"format": "pt", "famix_version": __version__})
    model = model_config(ckpt)
    meta = {
        "famix": {"format": FORMAT, "version": __version__, "card": _text_fingerprint(card)},
        "config": ckpt.get("config") or {"model": vars(model)},
        "label_set": model.labels.to_dict(),
        "normalization": {"input": "RGB in [0, 1]", "mean": model.mean, "std": model.std},
        "run": ckpt.get("run"),
        "steps": int(ckpt.get("cur_itrs", 0)),
        "best_score": float(ckpt.get("best_score", 0.0)),
        "evaluations": [  # scores only: the confusion matrices stay in the result files
            {
                "file": e["file"],
                "test_time": e.get("test_time"),
                "datasets": {
                    spec: {"miou": r.get("miou"), "per_class_iou": r.get("per_class_iou")}
                    for spec, r in e["datasets"].items()
                },
            }
            for e in evals
        ],
    }
    text = json.dumps(meta, indent=1)
    atomic_write(folder / CARD, lambda tmp: tmp.write_bytes(card.encode()))
    atomic_write(folder / CONFIG, lambda tmp: tmp.write_text(text + "\n"))  # last: marks the save whole
    if bank is not None:
        atomic_write(folder / BANK, lambda tmp: shutil.copyfile(bank, tmp))
    elif ours and (folder / BANK).is_file():  # an earlier save's bank: not this model's any more
        (folder / BANK).unlink()
    return folder
