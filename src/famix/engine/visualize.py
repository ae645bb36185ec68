"""Pictures of predictions: trainId maps, Cityscapes colours, overlays on the image (images and videos)."""

from __future__ import annotations

import numpy as np
import torch

from famix.data.labels import NUM_CLASSES, colorize, palette

OUTPUT_KINDS = ("trainid", "color", "overlay")
VIDEO_OUTPUTS = ("overlay", "color")


def overlay(image: torch.Tensor | np.ndarray, train_ids: torch.Tensor | np.ndarray, alpha: float = 0.5):
    """Blend the Cityscapes colours of ``train_ids`` [H, W] over ``image`` uint8 [3, H, W].

    Returns uint8 [H, W, 3]. Pixels without a valid class (e.g. 255) keep the original image.
    """
    img = np.asarray(image).transpose(1, 2, 0).astype(np.float32)  # [H, W, 3]
    ids = np.asarray(train_ids).astype(np.int64)  # [H, W]
    colours = palette()[np.clip(ids, 0, 255)].astype(np.float32)  # [H, W, 3]
    blended = (1 - alpha) * img + alpha * colours
    valid = ((ids >= 0) & (ids < NUM_CLASSES))[..., None]
    return np.where(valid, blended, img).round().clip(0, 255).astype(np.uint8)


def render(kind: str, image: torch.Tensor, ids: np.ndarray) -> np.ndarray:
    """One output picture of ``ids`` [H, W] uint8: "trainid" [H, W], "color" or "overlay" [H, W, 3]."""
    if kind == "trainid":
        return ids  # saved as mode L
    if kind == "color":
        return colorize(ids)
    if kind == "overlay":
        return overlay(image, ids)
    raise ValueError(f"unknown output {kind!r}; choose from {OUTPUT_KINDS}")
