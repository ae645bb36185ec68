"""``famix convert``: official FAMix checkpoints and pickle banks, OpenAI CLIP ``.pt`` -> famix files."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from famix.config import ModelConfig
from famix.data.labels import CLASS_NAMES
from famix.engine.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from famix.io import save_safetensors
from famix.models.build import build_segmenter
from famix.models.clip import load_clip_state_dict
from famix.style.bank import IGNORE_KEY, StyleBank

_LAYER3_BLOCKS = {6: "RN50", 23: "RN101"}


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


def convert_checkpoint(src: str, dst: str) -> None:
    """Official ``.pth`` -> famix checkpoint (model weights + the config they need), checked by loading."""
    state = load_checkpoint(src)["model_state"]
    cfg = infer_model_config(state)
    model = build_segmenter(cfg, seed=0)
    load_model_state(model, state, f"checkpoint {src}")
    save_checkpoint(
        dst, model_state=model.state_dict(), config={"model": vars(cfg)}, cur_itrs=0, best_score=-1.0
    )


def convert_bank(src: str, dst: str, trust_pickle: bool = False) -> None:
    """Official pickle bank (``"<class>_mu"``/``"_std"`` lists of [C, 1, 1] tensors) -> safetensors bank."""
    if not trust_pickle:
        raise ValueError(
            f"{src} is a pickle: unpickling runs code from the file. If you trust its origin, pass "
            "--trust-pickle to convert it once into a safe safetensors bank"
        )
    with open(src, "rb") as f:
        raw = pickle.load(f)  # noqa: S301 (explicit opt-in above)
    channels = next(iter(raw.values()))[0].numel() if raw else 256
    bank = StyleBank(list(CLASS_NAMES), channels, metadata={"source": f"official pickle {Path(src).name}"})
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


def convert_clip(src: str, dst: str) -> None:
    """OpenAI TorchScript / state-dict CLIP weights -> safetensors."""
    state = {k: v.contiguous() for k, v in load_clip_state_dict(src).items()}
    save_safetensors(state, dst)


def run(kind: str, src: str, dst: str, trust_pickle: bool = False) -> None:
    if kind == "checkpoint":
        convert_checkpoint(src, dst)
    elif kind == "bank":
        convert_bank(src, dst, trust_pickle)
    elif kind == "clip":
        convert_clip(src, dst)
    else:
        raise ValueError(f"unknown conversion {kind!r}: checkpoint | bank | clip")
