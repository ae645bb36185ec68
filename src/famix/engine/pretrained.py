"""Trained models as folders to share (``famix save``, ``famix.save_pretrained``; the Hub's layout):

- ``model.safetensors``: the segmenter's weights (no pickle);
- ``config.json``: the famix version and format, the resolved run config (model section with its label
  set), the label set, the input normalisation, the run record and step of the checkpoint, its evaluations;
- ``README.md``: a model card the Hub validates: metadata (license, base_model, datasets, tags with the
  papers' arXiv ids, model-index: one result per dataset, protocol and test-time setting), then what the
  model is, how to load it, its training, classes and evaluations;
- ``bank.safetensors`` when the style bank is included.

No file of a saved folder holds a path of the machine it was saved on. One rule (:func:`shareable_path`): a
path inside the run folder (``train.out``) is written relative to it (the run folder itself by its name),
any other by its last part, the file or folder name; a dataset spec keeps its name, options and split names
(:func:`shareable_spec`): ``data.train=folder:/home/u/data/mine_idx:train`` -> ``folder:mine_idx:train``,
``style.bank=/home/u/runs/a/bank.safetensors`` -> ``bank.safetensors``. The known path settings
(``model.weights``, ``data.train`` / ``data.val``, ``style.bank``, ``train.out``) follow it, relative or not,
and so does any other absolute path in the config, the run record, the evaluations or the included bank's
metadata (a copy of the bank: ``config.json``'s ``famix.bank`` names the bank it copies).

:func:`read_folder` gives back the checkpoint dict ``load_checkpoint`` returns for a ``.pt``, so every command
that takes a checkpoint takes such a folder, or a Hub id of one (``hf:OWNER/NAME``, :mod:`famix.engine.hub`),
of which only the files above are downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path

import yaml
from safetensors.torch import load_file

from famix.config import ModelConfig, from_dict
from famix.data.specs import is_option, join_fields, parse_spec, split_fields
from famix.engine import hub, ood
from famix.engine.runs import KEY
from famix.io import atomic_write, file_fingerprint, remove_stale_temps, save_safetensors
from famix.normalization import OPENAI_NORMALIZATION
from famix.version import __version__

FORMAT = "famix-pretrained"
WEIGHTS, CONFIG, CARD, BANK = "model.safetensors", "config.json", "README.md", "bank.safetensors"
FILES = (WEIGHTS, CONFIG, CARD, BANK)  # all a saved folder holds; all a Hub load fetches
SPACE_APP, SPACE_REQUIREMENTS = "app.py", "requirements.txt"  # `famix save --space`: the page of famix app
SPACE_FILES = (SPACE_APP, SPACE_REQUIREMENTS)
FAMIX_PAPER, PODA_PAPER = "2311.17922", "2212.03241"  # arXiv ids: FAMix (CVPR 2024), PODA (ICCV 2023)
LICENSE = "mit"  # famix's, and the known CLIP weights' (OpenAI's CLIP, open_clip's): see the card's License


def major(version: str) -> int:
    return int(version.split(".")[0])


def is_folder(path) -> bool:
    """Whether ``path`` is a folder (a ``famix save`` folder, or one that should be)."""
    return not hub.is_hub_id(path) and Path(path).is_dir()


def resolve(source) -> Path:
    """The local path of a model source: a Hub id is downloaded (or found in the Hub's cache)."""
    return hub.download(source, FILES) if hub.is_hub_id(source) else Path(source)


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
        ood.KEY: ood.from_json(meta.get(ood.KEY)),
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


# -- paths: what a saved folder may say about the machine it was saved on ------------------------------------

_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def _is_absolute(text: str) -> bool:
    """Whether ``text`` is an absolute path of some machine (POSIX, ``~``, a Windows drive), not a URL."""
    return "://" not in text and (text.startswith(("/", "~", "\\")) or bool(_DRIVE.match(text)))


def _is_path(text: str) -> bool:
    """Whether a setting's value is a path (absolute, or relative with a folder in it) rather than a name."""
    return _is_absolute(text) or "/" in text or "\\" in text or text in (".", "..")


def shareable_path(path: str, run: str | None = None) -> str:
    """``path`` as a saved folder records it: relative to the run folder ``run`` when inside it (the run
    folder itself by its name), else its last part, the file or folder name. Relative paths are read from
    the working folder, as the run read them."""
    full = Path(os.path.abspath(os.path.expanduser(path)))
    if run:
        base = Path(os.path.abspath(os.path.expanduser(run)))
        if full == base:
            return base.name
        if full.is_relative_to(base):
            return full.relative_to(base).as_posix()
    last = re.split(r"[\\/]+", path.rstrip("\\/"))[-1]
    return last if last not in ("", ".", "..", "~") else full.name


def shareable_spec(spec: str, run: str | None = None) -> str:
    """A dataset spec with every field that is a path (its ROOT, a split-list file, an option's folder)
    made :func:`shareable_path`; names, conditions, split names and other options kept."""
    name, *fields = split_fields(spec)
    out = []
    for field in fields:
        key, value = field.split("=", 1) if is_option(field) else (None, field)
        value = shareable_path(value, run) if _is_path(value) else value
        out.append(value if key is None else f"{key}={value}")
    return join_fields([name, *out])


def shareable(value, run: str | None = None):
    """JSON data (dicts, lists, strings) with every absolute path in it, alone or as a field of a dataset
    spec, made :func:`shareable_path` (URLs kept)."""
    if isinstance(value, dict):
        return {k: shareable(v, run) for k, v in value.items()}
    if isinstance(value, list):
        return [shareable(v, run) for v in value]
    if isinstance(value, str) and "://" not in value:
        if _is_absolute(value):
            return shareable_path(value, run)
        values = [f.split("=", 1)[1] if is_option(f) else f for f in split_fields(value)[1:]]
        if any(_is_absolute(v) for v in values):
            return shareable_spec(value, run)
    return value


def shareable_config(config: dict, run: str | None, bank: bool = False) -> dict:
    """A run config (or a run record's settings, laid out alike) as a saved folder records it: its path
    settings made shareable (``style.bank``: ``bank.safetensors``, the folder's own file, when ``bank``),
    then any other absolute path (:func:`shareable`). ``run``: the run folder (``train.out``)."""
    out = json.loads(json.dumps(config))  # a copy
    model, data = out.get("model") or {}, out.get("data") or {}
    style, train = out.get("style") or {}, out.get("train") or {}
    for key in ("weights", "backbone"):  # a weights file, an open_clip config file (not a tag, not a name)
        if isinstance(model.get(key), str) and _is_path(model[key]):
            model[key] = shareable_path(model[key], run)
    if isinstance(data.get("train"), str):
        data["train"] = shareable_spec(data["train"], run)
    elif isinstance(data.get("train"), list):  # several sources
        data["train"] = [shareable_spec(v, run) if isinstance(v, str) else v for v in data["train"]]
    if isinstance(data.get("val"), list):
        data["val"] = [shareable_spec(v, run) if isinstance(v, str) else v for v in data["val"]]
    if isinstance(style.get("bank"), str):
        style["bank"] = BANK if bank else shareable_path(style["bank"], run)
    if isinstance(train.get("out"), str):
        train["out"] = shareable_path(train["out"], run)
    return shareable(out, run)


def shareable_record(record: dict | None, run: str | None) -> dict | None:
    """A run record (``engine.runs``) as a saved folder records it: its settings as :func:`shareable_config`
    makes a config's; its inputs are fingerprints already."""
    if not isinstance(record, dict):
        return record
    settings = record.get("settings")
    out = {**record, "settings": shareable_config(settings, run)} if isinstance(settings, dict) else record
    return shareable(out, run)


# -- evaluations: rows of (data, protocol, test-time setting, precision) -> mIoU -----------------------------


def _given(tta: dict, protocol: str) -> dict:
    """The test-time options a user gave (defaults left out): a protocol's own resize and windows are the
    protocol's, not the user's (``--protocol mmseg`` sets fit, window and stride)."""
    own = {"fit"} | ({"window", "stride"} if protocol == "mmseg" else set())
    return {k: v for k, v in tta.items() if v not in (None, False) and k not in own}


def _row(data: str, protocol: str, tta: dict, amp, miou, per_class, grouped: bool) -> dict:
    return {
        "data": data,
        "protocol": protocol,
        "test_time": _given(tta, protocol),
        "amp": amp,
        "grouped": grouped,
        "miou": miou,
        "per_class_iou": per_class,
    }


def result_rows(result: dict) -> list[dict]:
    """One evaluation row per dataset of a ``famix eval`` results file (or of an evaluation listed by a
    folder saved before evaluations were rows); a file without a protocol is FAMix's (``paper``)."""
    protocol = result.get("protocol") or "paper"
    return [
        _row(
            spec,
            protocol,
            result.get("test_time") or {},
            result.get("amp"),
            r.get("miou"),
            r.get("per_class_iou"),
            "grouped_from" in result,
        )  # fmt: skip
        for spec, r in result["datasets"].items()
    ]


def evaluations(checkpoint: Path) -> list[dict]:
    """The evaluation rows of the ``famix eval`` result files beside a checkpoint (``<stem>.eval.*.json``)."""
    rows = []
    for path in sorted(checkpoint.parent.glob(f"{checkpoint.stem}.eval.*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("datasets"), dict):
            rows += result_rows(data)
    return rows


def eval_cache_path(source) -> Path:
    """Where a model's evaluations are cached (``famix eval``, ``famix.evaluate``): ``best.pt`` ->
    ``best.eval-cache.json`` beside it; a folder's or Hub id's in the working folder (:func:`base_path`)."""
    base = base_path(source)
    return base.with_name(f"{base.stem}.eval-cache.json")


def cached_evaluations(path: Path, fingerprints: set[str], names: list[str]) -> list[dict]:
    """The evaluation rows an evaluation cache holds for the model whose content has one of ``fingerprints``
    (``io.file_fingerprint`` of its file, ``checkpoint.state_fingerprint`` of its weights): those of ``famix
    eval`` and of ``famix.evaluate`` from Python alike. ``names``: the model's class names."""
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    rows = []
    for entry in entries.values() if isinstance(entries, dict) else []:
        record = entry.get(KEY) or {} if isinstance(entry, dict) else {}
        if record.get("kind") != "evaluate" or record.get("inputs", {}).get("checkpoint") not in fingerprints:
            continue
        s, result = record.get("settings") or {}, entry.get("result") or {}
        labels = s.get("group") or s.get("classes")  # the classes the IoUs are of
        keys = [c["name"] for c in labels["classes"]] if labels else names
        ious = result.get("per_class_iou") or []
        per_class = dict(zip(keys, ious, strict=True)) if len(keys) == len(ious) else None
        protocol = s.get("protocol", "paper")
        rows.append(
            _row(
                s.get("data"),
                protocol,
                s.get("tta") or {},
                s.get("amp"),
                result.get("miou"),
                per_class,
                "group" in s,
            )  # fmt: skip
        )
    return rows


def unique_rows(rows: list[dict]) -> list[dict]:
    """Rows once each (a ``famix eval`` run is both in its results file and in the cache), in the order of
    data, protocol, test-time setting."""
    seen = {}
    for r in rows:
        key = json.dumps([r["data"], r["protocol"], r["test_time"], r["amp"], r["grouped"]], sort_keys=True)
        seen.setdefault(key, r)
    return sorted(seen.values(), key=lambda r: (r["data"] or "", r["protocol"], setting(r)))


def stored_rows(evaluations: list[dict]) -> list[dict]:
    """The rows a saved folder's ``config.json`` lists (earlier saves listed results files: read as rows)."""
    rows = []
    for e in evaluations:
        rows += result_rows(e) if isinstance(e.get("datasets"), dict) else [e]
    return rows


def test_time(tta: dict) -> str:
    """Test-time options for people: "plain", or e.g. "scales 0.75,1,1.25, flip", "scale 0.5 + 1"."""
    parts = []
    if tta.get("scales"):
        parts.append("scales " + ",".join(f"{v:g}" for v in tta["scales"]))
    elif tta.get("scale") not in (None, 1.0):
        parts.append(f"scale {tta['scale']:g}" + (" + 1" if tta.get("ensemble") else ""))
    if tta.get("window"):
        parts.append(f"window {tta['window']}" + (f" stride {tta['stride']}" if tta.get("stride") else ""))
    if tta.get("flip"):
        parts.append("flip")
    return ", ".join(parts) or "plain"


def setting(row: dict) -> str:
    """A row's test-time setting: its options and the precision it ran in ("plain, fp32", "flip, bf16"), and
    whether its classes were grouped."""
    amp = {"off": "fp32", None: None}.get(row.get("amp"), row.get("amp"))
    parts = [test_time(row["test_time"]), *([amp] if amp else [])]
    if row.get("grouped") and isinstance(row.get("per_class_iou"), dict):
        parts.append(f"{len(row['per_class_iou'])} groups")
    return ", ".join(parts)


# -- the model card ------------------------------------------------------------------------------------------


def clip_hub_id(backbone: str, weights: str | None) -> str | None:
    """The Hub id of the CLIP weights a model starts from, where famix can know it: an open_clip tag's (its
    pretrained entry's ``hf_hub``), or a file's whose content is one of open_clip's files that name their
    SHA-256 (OpenAI's, in their download URL). ``weights``: the run record's ``clip weights`` (a tag or a
    file's fingerprint) or ``model.weights``. None for random, famix's own or unknown weights."""
    if not weights or weights == "random":
        return None
    import open_clip

    for arch in (f"{backbone}-quickgelu", backbone):
        if arch not in open_clip.list_models():
            continue
        for tag in open_clip.list_pretrained_tags_by_model(arch):
            entry = open_clip.pretrained.get_pretrained_cfg(arch, tag)
            parts = (entry.get("url") or "").split("/")
            sha = parts[-2] if len(parts) > 1 and re.fullmatch(r"[0-9a-f]{64}", parts[-2]) else None
            if weights == tag or (sha is not None and weights == f"sha256:{sha[:16]}"):
                return (entry.get("hf_hub") or "").strip("/") or None
    return None


def dataset_name(spec: str) -> str:
    """A dataset spec's dataset, by name only: its table name (``cityscapes``), or a ``folder:`` dataset's
    folder name."""
    parsed = parse_spec(spec)
    return shareable_path(parsed.root) if parsed.name == "folder" and parsed.root else parsed.name


def is_adapted(ckpt: dict) -> bool:
    """Whether the model was adapted by ``famix adapt`` (PODA): its run record says so, with restyling (its
    control, fine-tuned without styles, is not)."""
    kind = (ckpt.get(KEY) or {}).get("kind")
    return kind == "adapt" and (ckpt.get("config") or {}).get("style", {}).get("mix") != "none"


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def model_index(name: str, rows: list[dict]) -> list[dict]:
    """The Hub's ``model-index`` of evaluation rows: one result per row, told apart by ``dataset.config``
    (the data, protocol and test-time setting) and the metric's ``config`` (protocol and setting)."""
    results = []
    for r in rows:
        if r["miou"] is None or (isinstance(r["miou"], float) and math.isnan(r["miou"])):
            continue
        how = f"protocol {r['protocol']}, {setting(r)}"
        results.append(
            {
                "task": {"type": "image-segmentation", "name": "Semantic Segmentation"},
                "dataset": {
                    "type": dataset_name(r["data"]),
                    "name": r["data"],
                    "config": f"{r['data']}, {how}",
                    "args": {"protocol": r["protocol"], "test_time": setting(r)},
                },
                "metrics": [
                    {"type": "mean_iou", "value": round(r["miou"], 2), "name": "mIoU (%)", "config": how}
                ],
            }
        )
    return [{"name": name, "results": results}] if results else []


def card_metadata(name: str, ckpt: dict, rows: list[dict]) -> dict:
    """The card's metadata block (huggingface_hub's ``ModelCardData`` fields) of a shareable checkpoint
    dict."""
    cfg = ckpt.get("config") or {}
    model = cfg.get("model") or {}
    clip = (ckpt.get(KEY) or {}).get("inputs", {}).get("clip weights") or model.get("weights")
    base = clip_hub_id(model.get("backbone", ""), clip)
    stored = (cfg.get("data") or {}).get("train")
    train = [stored] if isinstance(stored, str) else [s for s in stored or [] if isinstance(s, str)]
    datasets = list(dict.fromkeys(dataset_name(s) for s in [*train, *(r["data"] for r in rows)]))
    tags = ["famix", "semantic-segmentation", "domain-generalization", "clip", f"arxiv:{FAMIX_PAPER}"]
    tags += ["poda", f"arxiv:{PODA_PAPER}"] if is_adapted(ckpt) else []
    index = model_index(name, rows)
    return {
        "license": LICENSE,
        "library_name": "famix",
        "pipeline_tag": "image-segmentation",
        "tags": tags,
        **({"base_model": base} if base else {}),
        **({"datasets": datasets} if datasets else {}),
        **({"model-index": index} if index else {}),
    }


def hub_id(repo: str, revision: str | None = None) -> str:
    """The id ``famix.load`` takes for Hub model ``repo`` (at ``revision``)."""
    return f"{hub.PREFIX}{repo}" + (f"@{revision}" if revision else "")


def _usage(name: str, repo: str | None, revision: str | None) -> list[str]:
    if repo is None:  # a folder on disk: loaded by its path; pushed, it gets a Hub id
        return [
            "```python",
            "import famix  # pip install famix",
            f'model = famix.load("{name}")  # the path of this folder',
            'labels = model.predict("street.png")  # [H, W] uint8 class indices',
            "```",
            "",
            f"`famix predict {name} street.png` and `famix eval {name} --data SPEC` take the folder too. "
            f'To share it: `famix push {name} OWNER/NAME` (or `famix.push(model, "OWNER/NAME")`) uploads it '
            "to the Hugging Face Hub as the model OWNER/NAME, with this card written for it; it then loads "
            'as `famix.load("hf:OWNER/NAME")`.',
        ]
    ref = hub_id(repo, revision)
    return [
        "```python",
        'import famix  # pip install "famix[hub]"',
        f'model = famix.load("{ref}")',
        'labels = model.predict("street.png")  # [H, W] uint8 class indices',
        "```",
        "",
        f"`famix predict {ref} street.png` and `famix eval {ref} --data SPEC` take it too.",
    ]


def model_card(
    name: str,
    ckpt: dict,
    rows: list[dict],
    bank: str | None,
    repo: str | None = None,
    revision: str | None = None,
    space: dict | None = None,
) -> str:
    """The README.md of a saved model (``ckpt``: config and run record made shareable already): the Hub's
    metadata block, then what it is, how to load it (from the folder; from ``repo`` once pushed there),
    its training, classes, evaluations, license and citation."""
    cfg = ckpt.get("config", {})
    model = from_dict(cfg.get("model", {}), ModelConfig, "model.")
    labels = model.labels
    data, style, train = cfg.get("data", {}), cfg.get("style", {}), cfg.get("train", {})
    meta = {**card_metadata(name, ckpt, rows), **(space or {})}  # space: a Space's configuration fields
    base = meta.get("base_model")
    adapted = is_adapted(ckpt)
    head = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()
    lines = ["---", head, "---", "", f"# {name}", ""]
    lines += [
        f"A [FAMix](https://arxiv.org/abs/{FAMIX_PAPER}) segmenter (Fahes et al., CVPR 2024), made with "
        f"famix (`pip install famix`): the CLIP {model.backbone} image encoder"
        + (f" (weights `{base}`)" if base else "")
        + f" under a DeepLabv3+ head (output stride {model.output_stride}, freeze {model.freeze}), trained "
        f"on one source domain to generalise to others; it predicts {labels.describe()}."
        + (
            f" Adapted by [PODA](https://arxiv.org/abs/{PODA_PAPER}) (`famix adapt`): its head fine-tuned on "
            "source images restyled toward a target domain described in words."
            if adapted
            else ""
        )
    ]
    lines += ["", "## Use", "", *_usage(name, repo, revision), "", "## Training", ""]
    lines += [
        f"- source data: {_sources(data)}, crop {data.get('crop', '?')}, batch {data.get('batch_size', '?')}",
        *_auto_target(ckpt),
        f"- CLIP weights: `{base or model.weights or 'random'}`",
        f"- style mixing: `{style.get('mix', '?')}` (grid {style.get('grid', '?')}, "
        f"Beta({style.get('beta', '?')}))" + (f", style bank included: `{bank}`" if bank else ""),
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
    if rows:
        lines += ["| data | protocol | test-time setting | mIoU (%) |", "| --- | --- | --- | --- |"]
        lines += [f"| `{r['data']}` | {r['protocol']} | {setting(r)} | {_pct(r['miou'])} |" for r in rows]
    else:
        lines.append(
            "No evaluation yet: `famix eval` of the checkpoint (or `famix.evaluate` / `model.evaluate` in "
            "Python) records one, and `famix save` lists it here."
        )
    lines += [
        "",
        "## License",
        "",
        f"`license: {LICENSE}` is famix's license and that of the CLIP weights famix starts from (OpenAI's "
        "CLIP and open_clip's weights are MIT-licensed). The trained weights are their trainer's to license, "
        "and the terms of the datasets they were trained on may also apply: change the field if other terms "
        "hold.",
        "",
        "## Citation",
        "",
        'FAMix: Fahes et al., "A Simple Recipe for Language-guided Domain Generalized Segmentation", CVPR '
        f"2024 ([arXiv:{FAMIX_PAPER}](https://arxiv.org/abs/{FAMIX_PAPER})).",
    ]
    if adapted:
        lines.append(
            'PODA: Fahes et al., "PØDA: Prompt-driven Zero-shot Domain Adaptation", ICCV 2023 '
            f"([arXiv:{PODA_PAPER}](https://arxiv.org/abs/{PODA_PAPER}))."
        )
    lines += ["", f"Saved with famix {__version__}.", ""]
    return "\n".join(lines)


def _sources(data: dict) -> str:
    """The card's words for ``data.train``: one spec, or several with their shares (train_weights)."""
    train, weights = data.get("train", "?"), data.get("train_weights")
    if not isinstance(train, list):
        return f"`{train}`"
    shares = weights or [None] * len(train)
    named = zip(train, shares, strict=True)
    return ", ".join(f"`{s}`" + (f" (weight {w:g})" if w is not None else "") for s, w in named)


def _auto_target(ckpt: dict) -> list[str]:
    """The card's line on a target chosen by ``famix adapt --target auto``: the images and CLIP's scores."""
    auto = ((ckpt.get(KEY) or {}).get("inputs") or {}).get("auto target")
    if not isinstance(auto, dict):
        return []
    scores = ", ".join(f"{w} {p:.2f}" for w, p in (auto.get("scores") or {}).items())
    return [f"- target named by CLIP from {auto.get('images', '?')} images of `{auto.get('data')}`: {scores}"]


def _text_fingerprint(text: str) -> str:
    """The fingerprint ``io.file_fingerprint`` gives a file holding ``text``."""
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _shareable_bank(bank: Path, run: str | None):
    """The style bank ``bank`` with its metadata made shareable (its styles as they are)."""
    from famix.style.bank import StyleBank

    copy = StyleBank.load(bank)
    meta = dict(copy.metadata)
    if isinstance(meta.get(KEY), dict):
        meta[KEY] = shareable_record(meta[KEY], run)
    copy.metadata = shareable(meta, run)
    return copy


def write_folder(
    ckpt: dict,
    folder: str | Path,
    name: str,
    rows: list[dict],
    bank: str | Path | None,
    force: bool,
    repo: str | None = None,
    revision: str | None = None,
    space: dict | None = None,
) -> Path:
    """Write a checkpoint dict as a model folder, every path in it made shareable (the module's rule), its
    card naming Hub model ``repo`` (at ``revision``) if given (``space``: a Space's fields added to its
    metadata). A folder holding anything but an earlier save
    (a ``config.json`` of this format) or what a killed save left is refused unless ``force``, and so is a
    model card edited by hand since famix wrote it; files are written atomically, ``config.json`` last."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file: pass a folder to save the model into")
    try:
        earlier = json.loads((folder / CONFIG).read_text())
        ours = earlier["famix"]["format"] == FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        earlier, ours = {}, False
    if folder.is_dir() and not ours and not force:
        # a save killed before its config.json: only its own files, whole or half-written (hidden temps)
        partial = [p.name for p in folder.iterdir()]
        mine = FILES + SPACE_FILES
        if partial and all(n in mine or any(n.startswith(f".{m}.") for m in mine) for n in partial):
            ours = True
        elif partial:
            raise FileExistsError(
                f"{folder} is not empty and was not written by `famix save`: pass another folder (or --force "
                "to write into it)"
            )
    run = (ckpt.get("config") or {}).get("train", {}).get("out")
    stored = ckpt.get("config") or {"model": vars(model_config(ckpt))}
    shared = {**ckpt, "config": shareable_config(stored, run, bank is not None)}
    shared[KEY] = shareable_record(ckpt.get(KEY), run)
    rows = unique_rows([{**r, "data": shareable_spec(r["data"], run)} for r in rows if r.get("data")])
    style_bank = _shareable_bank(Path(bank), run) if bank is not None else None  # read before any write
    card = model_card(name, shared, rows, Path(bank).name if bank else None, repo, revision, space)
    written_card = (earlier.get("famix") or {}).get("card")  # the fingerprint of the card famix wrote
    edited = (folder / CARD).is_file() and written_card not in (None, file_fingerprint(folder / CARD))
    if edited and ours and not force and (folder / CARD).read_bytes() != card.encode():
        raise FileExistsError(
            f"{folder / CARD} was edited since `famix save` wrote it: famix does not replace it. Move it "
            "away (your text is kept), or pass --force to replace it"
        )
    for n in FILES:
        remove_stale_temps(folder / n)  # what a killed save left behind
    folder.mkdir(parents=True, exist_ok=True)
    state = {k.removeprefix("module."): v.detach().cpu().contiguous() for k, v in ckpt["model_state"].items()}
    save_safetensors(state, folder / WEIGHTS, {"format": "pt", "famix_version": __version__})
    info = {"format": FORMAT, "version": __version__, "card": _text_fingerprint(card)}
    if style_bank is not None:
        style_bank.save(folder / BANK)
        trained_with = (ckpt.get(KEY) or {}).get("inputs", {}).get("bank")
        info["bank"] = {"file": BANK, "fingerprint": file_fingerprint(folder / BANK), "copy_of": trained_with}
    elif ours and (folder / BANK).is_file():  # an earlier save's bank: not this model's any more
        (folder / BANK).unlink()
    model = model_config(shared)
    meta = {
        "famix": info,
        "config": shared["config"],
        "label_set": model.labels.to_dict(),
        "normalization": {"input": "RGB in [0, 1]", "mean": model.mean, "std": model.std},
        "run": shared[KEY],
        "steps": int(ckpt.get("cur_itrs", 0)),
        "best_score": float(ckpt.get("best_score", 0.0)),
        "evaluations": rows,  # scores only: the confusion matrices stay in the result files and caches
    }
    reference = ood.to_json(ckpt.get(ood.KEY))  # famix diagnose's out-of-domain reference (engine.ood)
    if reference is not None:
        meta[ood.KEY] = reference
    text = json.dumps(meta, indent=1)
    atomic_write(folder / CARD, lambda tmp: tmp.write_bytes(card.encode()))
    atomic_write(folder / CONFIG, lambda tmp: tmp.write_text(text + "\n"))  # last: marks the save whole
    return folder
