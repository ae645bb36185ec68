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


def _fill() -> dict:
    """Padding values: image 0, mask 255 (ignore)."""
    from torchvision import tv_tensors

    return {tv_tensors.Image: 0, tv_tensors.Mask: 255}


def _crop_jitter_flip(crop, jitter: float, hflip: float):
    """``crop`` (a joint v2 transform), then colour jitter on the image and a joint horizontal flip."""
    from torchvision.transforms import v2

    steps = [crop]
    if jitter > 0:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    return v2.Compose(steps)


def train_transform(crop: int, jitter: float = 0.8, hflip: float = 0.5):
    """Source training transform (method.md section 5): random crop (image padded 0, mask padded 255),
    colour jitter, horizontal flip. Takes and returns (uint8 image [3, H, W], int64 label [H, W])."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    compose = _crop_jitter_flip(v2.RandomCrop(crop, pad_if_needed=True, fill=_fill()), jitter, hflip)

    def apply(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = compose(tv_tensors.Image(image), tv_tensors.Mask(label))
        return image.as_subclass(torch.Tensor), label.as_subclass(torch.Tensor)

    return apply


def synthia_transform(crop: int, jitter: float = 0.8, hflip: float = 0.5):
    """SYNTHIA's training transform (method.md section 5), scaled to ``crop``: random scale in
    [0.5, 2.0] (image bicubic, mask nearest), random crop of round(crop * 720 / 768) (image padded 0,
    mask padded 255), resize to crop x crop, colour jitter, horizontal flip.
    Takes and returns (uint8 image [3, H, W], int64 label [H, W]); output [3, crop, crop], [crop, crop]."""
    from torchvision import tv_tensors
    from torchvision.transforms import InterpolationMode, v2
    from torchvision.transforms.v2 import functional as TF

    size = round(crop * 720 / 768)
    compose = _crop_jitter_flip(
        v2.Compose(
            [
                v2.RandomCrop(size, pad_if_needed=True, fill=_fill()),
                v2.Resize((crop, crop), interpolation=InterpolationMode.BILINEAR, antialias=True),
            ]
        ),
        jitter,
        hflip,
    )

    def apply(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # RandomSizeAndCrop: one scale for both sides, drawn from torch's RNG so SeededTransform's
        # per-item seeding makes it reproducible.
        scale = 0.5 + 1.5 * torch.rand(()).item()
        h, w = image.shape[-2:]
        out = [max(1, int(h * scale)), max(1, int(w * scale))]
        image = TF.resize(tv_tensors.Image(image), out, InterpolationMode.BICUBIC, antialias=True)
        label = TF.resize(tv_tensors.Mask(label), out, InterpolationMode.NEAREST)
        image, label = compose(image, label)
        return image.as_subclass(torch.Tensor), label.as_subclass(torch.Tensor)

    return apply


def source_transform(dataset_name: str, crop: int, jitter: float = 0.8, hflip: float = 0.5):
    """The training transform of a source dataset (method.md section 5) by spec name: SYNTHIA's
    size-and-crop recipe for ``synthia``, random crop + jitter + flip for everything else (GTA5,
    Cityscapes, synthetic)."""
    if dataset_name.lower() == "synthia":
        return synthia_transform(crop, jitter, hflip)
    return train_transform(crop, jitter, hflip)
