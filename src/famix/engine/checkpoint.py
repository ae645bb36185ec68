"""Checkpoints: written atomically, read with ``weights_only=True``, checked against the model; and the
segmenter a checkpoint was trained as (:func:`load_segmenter`).

Layout (a superset of official FAMix ``.pth`` files, so either loads): ``model_state``,
``optimizer_state``, ``scheduler_state``, ``cur_itrs``, ``best_score``, plus famix's ``scaler_state``,
``config`` (the resolved run config) and ``famix_version``.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import torch
from torch import nn

from famix import __version__
from famix.config import ModelConfig, from_dict
from famix.io import atomic_write
from famix.models.build import build_segmenter
from famix.models.segmenter import Segmenter


def save_checkpoint(path: str | Path, **content) -> Path:
    """``torch.save`` of ``content`` (plus the famix version) to ``path``, atomically."""
    content = {**content, "famix_version": __version__}
    return atomic_write(path, lambda tmp: torch.save(content, tmp))


def load_checkpoint(path: str | Path) -> dict:
    """Read a famix or official FAMix checkpoint safely (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found: pass the .pt written by `famix train` "
            "(runs/<name>/best.pt) or an official FAMix .pth"
        )
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


def load_segmenter(
    checkpoint: str | Path, model_cfg: ModelConfig | None = None, device: torch.device | str = "cpu"
) -> tuple[Segmenter, ModelConfig]:
    """Build the segmenter a checkpoint was trained as, load its weights, return it in eval mode.

    famix checkpoints carry their config; official FAMix ``.pth`` files do not, so ``model_cfg`` (defaults:
    RN50, OS16, 19 classes) describes them. CLIP weights are not needed: the checkpoint holds the backbone.
    """
    ckpt = load_checkpoint(checkpoint)
    if model_cfg is None:
        stored = ckpt.get("config", {}).get("model")
        model_cfg = from_dict(stored, ModelConfig, "model.") if stored else ModelConfig()
    model_cfg = dataclasses.replace(model_cfg, weights=None)
    model = build_segmenter(model_cfg, seed=0)
    load_model_state(model, ckpt["model_state"], f"checkpoint {checkpoint}")
    model = model.to(device).eval()
    if torch.device(device).type == "cuda":  # cuDNN's fast NHWC convolutions
        model = model.to(memory_format=torch.channels_last)
    return model, model_cfg
