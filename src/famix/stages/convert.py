"""``famix convert``: official FAMix checkpoints and pickle banks, OpenAI CLIP ``.pt`` -> famix files.

A conversion is a function of its source file alone: the file it writes keeps its run record (the kind and
the source's content), so the same conversion again finds it and writes nothing. An existing destination is
replaced only if it is a file the same conversion writes (``force``: any)."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import torch

from famix.config import ModelConfig
from famix.data.trainids import CLASS_NAMES
from famix.engine.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from famix.engine.distributed import single_process
from famix.engine.exported import archive_format
from famix.engine.outputs import check_output_path, check_replaceable
from famix.engine.runs import KEY, RunRecord
from famix.io import file_fingerprint, remove_stale_temps, save_safetensors
from famix.models.build import build_segmenter
from famix.models.clip import load_clip_state_dict
from famix.style.bank import IGNORE_KEY, StyleBank

_LAYER3_BLOCKS = {6: "RN50", 23: "RN101"}
# What convert_checkpoint writes: the weights and their config, no training state (unlike `famix train`'s).
_CONVERTED_KEYS = {"model_state", "config", "cur_itrs", "best_score", "famix_version"}
_PICKLE_BANK = (
    "the official FAMix pickle bank, a dict of '<class>_mu' / '<class>_std' lists of [C, 1, 1] tensors"
)


def infer_model_config(state: dict[str, torch.Tensor], output_stride: int = 16) -> ModelConfig:
    """Backbone and class count of an official checkpoint, read from its tensor names and shapes."""
    if "backbone.class_embedding" in state:  # official FAMix checkpoints are all CLIP ResNets
        raise ValueError(
            "this checkpoint has a CLIP ViT backbone: `famix convert checkpoint` reads official FAMix "
            "(ResNet) checkpoints only; a checkpoint written by `famix train` needs no conversion"
        )
    blocks = len({k.split(".")[2] for k in state if k.startswith("backbone.layer3.")})
    width = state["backbone.conv1.weight"].shape[0] * 2
    backbone = "RN50x4" if width == 80 else _LAYER3_BLOCKS.get(blocks)
    if backbone is None:
        raise ValueError(
            f"cannot tell the backbone of a checkpoint with {blocks} layer3 blocks and stem width "
            f"{width}; known: RN50, RN101, RN50x4"
        )
    k = state["classifier.classifier.3.weight"].shape[0]
    names = list(CLASS_NAMES) if k == len(CLASS_NAMES) else [f"class {i}" for i in range(k)]
    return ModelConfig(backbone=backbone, num_classes=k, class_names=names, output_stride=output_stride)


def convert_checkpoint(src: str, dst: str, record: dict | None = None) -> None:
    """Official ``.pth`` -> famix checkpoint (model weights + the config they need), checked by loading;
    ``record``: the conversion's run record, kept in the file."""
    state = load_checkpoint(src)["model_state"]
    cfg = infer_model_config(state)
    model = build_segmenter(cfg, seed=0)
    load_model_state(model, state, f"checkpoint {src}")
    save_checkpoint(
        dst,
        model_state=model.state_dict(),
        config={"model": vars(cfg)},
        cur_itrs=0,
        best_score=-1.0,
        **({KEY: record} if record is not None else {}),
    )


def _safetensors_header(path: Path) -> dict | None:
    # The JSON header of a safetensors file (8-byte little-endian length, then JSON), None for other files.
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100_000_000:
                return None
            header = json.loads(f.read(size))
    except (OSError, struct.error, ValueError):
        return None
    return header if isinstance(header, dict) else None


def _bank_source(header: dict | None) -> str | None:
    # The "source" a famix style bank's header records ("" if none); None if it is not a famix bank.
    meta = (header or {}).get("__metadata__") or {}
    if meta.get("famix_style_bank") != "1":
        return None
    try:
        return str(json.loads(meta.get("metadata", "{}")).get("source", ""))
    except (ValueError, AttributeError):
        return ""


def _check_pickle_bank(path: Path) -> None:
    # Before the --trust-pickle question and unpickling: say what the file is if it cannot be one.
    if not path.is_file():
        raise FileNotFoundError(f"style bank {path} not found: pass {_PICKLE_BANK}")
    header = _safetensors_header(path)
    if header is not None and _bank_source(header) is not None:
        raise ValueError(
            f"{path} is already a famix style bank (safetensors): use it as it is, no conversion"
        )
    if header is not None:
        raise ValueError(
            f"{path} is a safetensors file, not a pickle: `famix convert bank` reads {_PICKLE_BANK}"
        )
    if zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is a zip archive (torch.save?), not a pickle: `famix convert bank` reads {_PICKLE_BANK}"
        )
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith(b"\x80"):  # the PROTO opcode every pickle of protocol 2 and later starts with
        raise ValueError(
            f"{path} is not a pickle file (it starts with {head!r}): `famix convert bank` reads "
            f"{_PICKLE_BANK}"
        )


def _is_style_lists(raw) -> bool:
    # Other keys are ignored, as convert_bank reads only "<class>_mu" / "<class>_std".
    return isinstance(raw, dict) and all(
        isinstance(v, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in v)
        for k, v in raw.items()
        if isinstance(k, str) and k.endswith(("_mu", "_std"))
    )


def convert_bank(src: str, dst: str, trust_pickle: bool = False, record: dict | None = None) -> None:
    """Official pickle bank (``"<class>_mu"``/``"_std"`` lists of [C, 1, 1] tensors) -> safetensors bank."""
    _check_pickle_bank(Path(src))
    if not trust_pickle:
        raise ValueError(
            f"{src} is a pickle: unpickling runs code from the file. If you trust its origin, pass "
            "--trust-pickle to convert it once into a safe safetensors bank"
        )
    try:
        with open(src, "rb") as f:
            raw = pickle.load(f)  # noqa: S301 (explicit opt-in above)
    except Exception as e:  # a damaged pickle raises anything from UnpicklingError to KeyError
        raise ValueError(
            f"cannot unpickle {src} ({type(e).__name__}: {str(e)[:200]}): expected {_PICKLE_BANK}; is the "
            "file complete?"
        ) from e
    if not _is_style_lists(raw):
        keys = sorted(map(str, raw))[:6] if isinstance(raw, dict) else None
        held = f"a dict with keys {keys}" if keys is not None else f"a {type(raw).__name__}"
        raise ValueError(f"{src} holds {held}, not {_PICKLE_BANK}")
    channels = next(iter(raw.values()))[0].numel() if raw else 256
    metadata = {
        "source": f"official pickle {Path(src).name}",
        **({KEY: record} if record is not None else {}),
    }
    bank = StyleBank(list(CLASS_NAMES), channels, metadata=metadata)
    for name in [*CLASS_NAMES, "255"]:
        mus, stds = raw.get(f"{name}_mu", []), raw.get(f"{name}_std", [])
        if len(mus) != len(stds):
            raise ValueError(f"{src}: {name}_mu has {len(mus)} entries but {name}_std {len(stds)}")
        if mus:
            key = IGNORE_KEY if name == "255" else name
            bank.styles[key] = (
                torch.stack([m.reshape(-1).float().cpu() for m in mus]),
                torch.stack([s.reshape(-1).float().cpu() for s in stds]),
            )
    bank.save(dst)


def convert_clip(src: str, dst: str, record: dict | None = None) -> None:
    """OpenAI TorchScript / state-dict CLIP weights -> safetensors (``record``: kept in its metadata)."""
    state = {k: v.contiguous() for k, v in load_clip_state_dict(src).items()}
    if not any(k.startswith("visual.") for k in state):
        raise ValueError(
            f"{src} holds no CLIP image tower (no visual.* tensors): pass CLIP weights (an OpenAI .pt or a "
            "CLIP state dict)"
        )
    save_safetensors(state, dst, {KEY: json.dumps(record, sort_keys=True)} if record is not None else None)


def _is_converted_checkpoint(path: Path) -> bool:
    if not zipfile.is_zipfile(path) or archive_format(path):
        return False
    try:  # mmap: the tensors are not read
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return (
        isinstance(ckpt, dict)
        and set(ckpt) - {KEY} == _CONVERTED_KEYS
        and ckpt["cur_itrs"] == 0
        and ckpt["best_score"] == -1.0
    )


def _is_converted_bank(path: Path) -> bool:
    return (_bank_source(_safetensors_header(path)) or "").startswith("official pickle ")


def _is_converted_clip(path: Path) -> bool:
    header = _safetensors_header(path)
    return (
        header is not None and _bank_source(header) is None and any(k.startswith("visual.") for k in header)
    )


# kind -> (whether an existing file is one this conversion wrote, what such a file is)
_WRITTEN_BY = {
    "checkpoint": (_is_converted_checkpoint, "a checkpoint written by `famix convert checkpoint`"),
    "bank": (_is_converted_bank, "a style bank written by `famix convert bank`"),
    "clip": (_is_converted_clip, "CLIP weights (safetensors) written by `famix convert clip`"),
}


def _stored_record(kind: str, path: Path) -> dict | None:
    """The run record a converted file keeps (None: none, or no file of this kind)."""
    if kind == "checkpoint":
        if not _is_converted_checkpoint(path):
            return None
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(KEY)
    meta = ((_safetensors_header(path) or {}).get("__metadata__")) or {}
    try:
        stored = json.loads(meta["metadata"]).get(KEY) if kind == "bank" else json.loads(meta[KEY])
    except (KeyError, ValueError, AttributeError):
        return None
    return stored if isinstance(stored, dict) else None


def run(
    kind: str, src: str | Path, dst: str | Path, trust_pickle: bool = False, force: bool = False, say=print
) -> Path:
    """Convert ``src`` into ``dst`` (``kind``: checkpoint | bank | clip); returns ``dst``. The converted file
    keeps the conversion's run record (the kind and the source's content): ``dst`` already holding this
    conversion is left as it is. An existing ``dst`` that this conversion did not write (a training run's
    checkpoint, a mined bank, any other file) raises FileExistsError unless ``force``."""
    single_process("famix convert", "every rank would write the same file")
    if kind not in _WRITTEN_BY:
        raise ValueError(f"unknown conversion {kind!r}: checkpoint | bank | clip")
    ours, what = _WRITTEN_BY[kind]
    dst = check_output_path(dst, "dst")
    # a missing source: no record, and the conversion below names it
    record = (
        RunRecord("convert", {"kind": kind}, {"source": file_fingerprint(src)})
        if Path(src).is_file()
        else None
    )
    if record is not None and dst.is_file():
        stored = _stored_record(kind, dst)
        if stored is not None and not record.changes(stored):
            say(f"famix convert: {dst} holds this conversion of {src} already: nothing to do")
            return dst
    check_replaceable(dst, ours, what, force)
    remove_stale_temps(dst)  # what a killed conversion left behind
    stored = record.to_dict() if record is not None else None
    if kind == "checkpoint":
        convert_checkpoint(str(src), str(dst), stored)
    elif kind == "bank":
        convert_bank(str(src), str(dst), trust_pickle, stored)
    else:
        convert_clip(str(src), str(dst), stored)
    return dst
