"""Joint image/label transforms (torchvision transforms v2) and CLIP normalisation."""

from __future__ import annotations

import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 CLIP-normalised [..., 3, H, W]."""
    mean = torch.tensor(CLIP_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=image.device).view(3, 1, 1)
    return (image.float() / 255.0 - mean) / std


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """CLIP-normalised float [..., 3, H, W] -> uint8 [..., 3, H, W]."""
    mean = torch.tensor(CLIP_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=image.device).view(3, 1, 1)
    return ((image * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)
