"""Checkpoints: written atomically, read with ``weights_only=True``, checked against the model; and the
segmenter a checkpoint was trained as (:func:`load_segmenter`).

Layout (a superset of official FAMix ``.pth`` files, so either loads): ``model_state``,
``optimizer_state``, ``scheduler_state``, ``cur_itrs``, ``best_score``, plus famix's ``scaler_state``,
``config`` (the resolved run config) and ``famix_version``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import torch
from torch import nn

from famix.config import ModelConfig
from famix.data.label_sets import LabelSet, LabelSetError
from famix.data.label_sets import load as load_label_set
from famix.engine import hub
from famix.engine.amp import trained_precision
from famix.engine.exported import ARCHIVE_NAMES, archive_format, read_metadata
from famix.engine.pretrained import model_config, read_folder, resolve
from famix.engine.runs import KEY
from famix.io import atomic_write
from famix.models.build import build_segmenter
from famix.models.segmenter import SegmentationNetwork
from famix.version import __version__


def save_checkpoint(path: str | Path, **content) -> Path:
    """``torch.save`` of ``content`` (plus the famix version) to ``path``, atomically."""
    content = {**content, "famix_version": __version__}
    return atomic_write(path, lambda tmp: torch.save(content, tmp))


def _exported_model(path: Path) -> str | None:
    # Why ``path`` is a model file rather than a checkpoint (torch.load would only advise weights_only=False).
    if path.suffix.lower() == ".onnx":
        return (
            f"{path} is an exported model (ONNX), not a checkpoint: evaluate the checkpoint it was exported "
            "from, or run it with `famix predict`"
        )
    kind = archive_format(path)
    if kind is None:
        return None
    loader = "torch.jit.load" if kind == "torchscript" else "torch.export.load"
    if read_metadata(path, kind) is None:  # not from famix export: e.g. OpenAI's CLIP weights
        return (
            f"{path} is a {ARCHIVE_NAMES[kind]} model archive, not a checkpoint: pass the .pt written by "
            "`famix train` (runs/<name>/best.pt) or an official FAMix .pth (CLIP weights go in model.weights)"
        )
    return (
        f"{path} is an exported model ({ARCHIVE_NAMES[kind]}), not a checkpoint: evaluate the checkpoint "
        "it was exported from (famix predict runs that checkpoint too, or its `famix export --format onnx` "
        f"file); load this file with {loader}"
    )


def load_checkpoint(path: str | Path) -> dict:
    """Read a famix or official FAMix checkpoint safely (tensors and plain containers only), or a model
    folder written by ``famix save``, or a Hub id ``hf:OWNER/NAME[@REVISION]`` of one (``pretrained``)."""
    if hub.is_hub_id(path) or Path(path).is_dir():
        return read_folder(resolve(path))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found: pass the .pt written by `famix train` (runs/<name>/best.pt), an "
            "official FAMix .pth, a folder written by `famix save`, or a Hub id hf:OWNER/NAME"
        )
    exported = _exported_model(path)
    if exported:
        raise ValueError(exported)
    with open(path, "rb") as f:
        head = f.read(4)
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):  # torch.save: zip, or legacy pickle
        what = (
            "truncated or corrupt (an incomplete copy?)" if head.startswith(b"PK") else "not a PyTorch file"
        )
        raise ValueError(
            f"checkpoint {path} is {what}: pass the .pt written by `famix train` (runs/<name>/best.pt) or "
            "an official FAMix .pth, copied whole"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"cannot read checkpoint {path} safely ({type(e).__name__}: {str(e)[:300]}). famix only "
            "loads tensors and plain containers (weights_only=True); re-save it from a trusted "
            "source as a state dict"
        ) from e
    if not isinstance(ckpt, dict):
        raise ValueError(
            f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict with 'model_state'"
        )
    if "model_state" not in ckpt:
        if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            return {"model_state": ckpt}  # a bare state dict
        raise ValueError(f"checkpoint {path} has no 'model_state' (keys: {sorted(ckpt)[:10]})")
    return ckpt


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load a segmenter state dict exactly: every tensor used, none left over, shapes equal."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if not (missing or unexpected or shapes):
        model.load_state_dict(state)
        return
    head = "classifier.classifier.3.weight"
    hint = "build the model with the model.backbone / model.output_stride it was trained with"
    backbone_fits = not any(k.startswith("backbone.") for k in missing + unexpected + shapes)
    if backbone_fits and head in state and head in own and state[head].shape[0] != own[head].shape[0]:
        hint = (
            f"it predicts {state[head].shape[0]} classes, the model {own[head].shape[0]}: set "
            f"model.num_classes={state[head].shape[0]} (and class_names) to match"
        )
    parts = [
        f"{len(v)} {what}: {', '.join(v[:6])}{' ...' if len(v) > 6 else ''}"
        for what, v in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes))
        if v
    ]
    raise ValueError(f"{source} does not fit this model ({'; '.join(parts)}). {hint.capitalize()}.")


def checkpoint_amp(ckpt: dict) -> str:
    """The precision a checkpoint was trained (and validated) in: its run record's (the resolved one: "off"
    for a model trained on a CPU before CPUs had autocast), else its config's ``run.amp``; bf16 for
    official files."""
    recorded = (ckpt.get(KEY) or {}).get("settings", {}).get("run", {}).get("amp")
    return recorded or ckpt.get("config", {}).get("run", {}).get("amp") or "bf16"


def state_fingerprint(state: dict[str, torch.Tensor], config: dict) -> str:
    """``"state-sha256:<16 hex>"`` of weights in memory (each tensor's name, dtype, shape and bytes, in name
    order) and the config they are built with: identifies a model that has no file (a loaded, perhaps changed,
    one) as ``io.file_fingerprint`` identifies a checkpoint file."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name in sorted(state):
        t = state[name].detach().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())  # 0-dim tensors too
    return f"state-sha256:{h.hexdigest()[:16]}"


def checkpoint_precision(given: str | None, ckpt: dict, device) -> tuple[str, torch.dtype | None]:
    """One precision per checkpoint: (the autocast name used, its dtype) of ``given`` (``--amp``), else the
    checkpoint's own ``run.amp`` (``engine.amp.trained_precision``: "off" where autocast does not apply)."""
    return trained_precision(given, checkpoint_amp(ckpt), device)


def checkpoint_label_set(model_cfg: ModelConfig, classes: str | None, checkpoint) -> LabelSet:
    """The label set a checkpoint's model predicts, or the file ``classes`` (``--classes``) where it agrees:
    the same classes, or, for a checkpoint storing none (official files, models configured by class names),
    the same names (the file then supplies the ids the data are read through, and the colours)."""
    own = model_cfg.labels
    if classes is None:
        return own
    given = load_label_set(classes)
    if given.same_classes(own) or (model_cfg.classes is None and given.names == own.names):
        return given
    raise LabelSetError(
        f"checkpoint {checkpoint} predicts {own.describe()}, but --classes {classes} is {given.describe()}"
        + (" with other ids or prompts" if given.names == own.names else "")
        + ": a checkpoint is evaluated with its own label set (it is stored in it; --classes may be left "
        "out). To report merged classes (e.g. categories), pass the grouping as --group FILE"
    )


def load_segmenter(
    checkpoint: str | Path | dict,
    model_cfg: ModelConfig | None = None,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> tuple[SegmentationNetwork, ModelConfig]:
    """Build the segmenter a checkpoint was trained as, load its weights, return it in eval mode.

    famix checkpoints carry their config; official FAMix ``.pth`` files do not, so ``model_cfg`` (defaults:
    RN50, OS16, 19 classes) describes them. CLIP weights are not needed: the checkpoint holds the backbone.
    The weights are channels_last on CUDA (cuDNN's NHWC convolutions) and, with ``channels_last`` (inference:
    eval, predict, the API), on a CPU too where the tower is convolutional (oneDNN's NHWC kernels: RN50 1.18x
    in fp32, 1.32x in bf16, docs/benchmarks.md).
    """
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)  # dict: read already
    if model_cfg is None:
        model_cfg = model_config(ckpt)
    model_cfg = dataclasses.replace(model_cfg, weights=None)
    model = build_segmenter(model_cfg, seed=0)
    where = "the checkpoint" if isinstance(checkpoint, dict) else f"checkpoint {checkpoint}"
    load_model_state(model, ckpt["model_state"], where)
    model = model.to(device).eval()
    if torch.device(device).type == "cuda" or (channels_last and model.family.channels_last):
        model = model.to(memory_format=torch.channels_last)
    return model, model_cfg
