"""Pictures of predictions: class-index maps, colours, overlays on the image (images and videos). Colours
come from a ``[256, 3]`` palette indexed by class (a label set's ``palette()``; default: Cityscapes')."""

from __future__ import annotations

import numpy as np
import torch

from famix.data.trainids import NUM_CLASSES, palette, train_id_to_label_id
from famix.settings import OUTPUT_KINDS


def overlay(
    image: torch.Tensor | np.ndarray,
    train_ids: torch.Tensor | np.ndarray,
    alpha: float = 0.5,
    colours: np.ndarray | None = None,
    num_classes: int = NUM_CLASSES,
):
    """Blend the colours (``colours`` [256, 3], default Cityscapes') of class indices ``train_ids`` [H, W]
    over ``image`` uint8 [3, H, W].

    Returns uint8 [H, W, 3]. Pixels without a valid class (>= ``num_classes``, e.g. 255) keep the image.
    """
    table = palette() if colours is None else colours
    img = np.asarray(image).transpose(1, 2, 0).astype(np.float32)  # [H, W, 3]
    ids = np.asarray(train_ids).astype(np.int64)  # [H, W]
    painted = table[np.clip(ids, 0, 255)].astype(np.float32)  # [H, W, 3]
    blended = (1 - alpha) * img + alpha * painted
    valid = ((ids >= 0) & (ids < num_classes))[..., None]
    return np.where(valid, blended, img).round().clip(0, 255).astype(np.uint8)


def render(
    kind: str, image: torch.Tensor, ids: np.ndarray, colours: np.ndarray | None = None, num_classes: int = 19
) -> np.ndarray:
    """One output picture of class indices ``ids`` [H, W] uint8: "trainid" [H, W] (the indices), "color" or
    "overlay" [H, W, 3] in ``colours`` ([256, 3] by class; default Cityscapes'), "labelid" [H, W] (the
    Cityscapes labelIds of a 19-class model's trainIds)."""
    table = palette() if colours is None else colours
    if kind == "trainid":
        return ids  # saved as mode L
    if kind == "labelid":
        return train_id_to_label_id()[ids]
    if kind == "color":
        return table[ids]
    if kind == "overlay":
        return overlay(image, ids, colours=table, num_classes=num_classes)
    raise ValueError(f"unknown output {kind!r}; choose from {OUTPUT_KINDS}")
