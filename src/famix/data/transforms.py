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


def train_transform(crop: int, jitter: float = 0.8, hflip: float = 0.5):
    """Source training transform (method.md section 5): random crop (image padded 0, mask padded 255),
    colour jitter, horizontal flip. Takes and returns (uint8 image [3, H, W], int64 label [H, W])."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    steps = [v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255})]
    if jitter > 0:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    compose = v2.Compose(steps)

    def apply(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = compose(tv_tensors.Image(image), tv_tensors.Mask(label))
        return image.as_subclass(torch.Tensor), label.as_subclass(torch.Tensor)

    return apply
