"""Loading a trained segmenter for evaluation and prediction."""

from __future__ import annotations

import dataclasses

import torch

from famix.config import ModelConfig, from_dict
from famix.engine.checkpoint import load_checkpoint, load_model_state
from famix.models.build import build_segmenter
from famix.models.segmenter import Segmenter


def load_segmenter(
    checkpoint: str, model_cfg: ModelConfig | None = None, device: torch.device | str = "cpu"
) -> tuple[Segmenter, ModelConfig]:
    """Build the segmenter a checkpoint was trained as and load its weights.

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
    return model.to(device).eval(), model_cfg
