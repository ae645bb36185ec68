"""Joint image/label transforms: training (torchvision transforms v2, random crop / jitter / flip), the
evaluation protocol's (centre crop-pad, resize to a height; numpy, before tensors) and CLIP normalisation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from famix.data.labels import IGNORE_INDEX

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# (image uint8 [H, W, 3], trainIds uint8 [H, W]) -> same, applied before conversion to tensors.
EvalTransform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 CLIP-normalised [..., 3, H, W]."""
    mean = torch.tensor(CLIP_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=image.device).view(3, 1, 1)
    return (image.float() / 255.0 - mean) / std


def _fill() -> dict:
    """Padding values: image 0, mask 255 (ignore)."""
    from torchvision import tv_tensors

    return {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}


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


def center_crop_pad(size: tuple[int, int]) -> EvalTransform:
    """Centre crop to (H, W), padding where the input is smaller: image with 0, label with 255.

    The crop origin follows torchvision's ``center_crop`` (round((in - out) / 2)); padding is split
    evenly so a portrait Mapillary image stays centred (FAMix pads the mask with 0 = road, a bug).
    """
    th, tw = size

    def spans(n: int, t: int) -> tuple[slice, slice]:
        if n >= t:
            start = int(round((n - t) / 2.0))
            return slice(start, start + t), slice(0, t)
        start = (t - n) // 2
        return slice(0, n), slice(start, start + n)

    def apply(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        (src_y, dst_y), (src_x, dst_x) = spans(image.shape[0], th), spans(image.shape[1], tw)
        out_image = np.zeros((th, tw, 3), dtype=image.dtype)
        out_label = np.full((th, tw), IGNORE_INDEX, dtype=label.dtype)
        out_image[dst_y, dst_x] = image[src_y, src_x]
        out_label[dst_y, dst_x] = label[src_y, src_x]
        return out_image, out_label

    return apply


def resize_height(height: int) -> EvalTransform:
    """Resize to ``height`` keeping the aspect ratio (width = int(w / h * height), as FAMix does):
    image bicubic, label nearest."""

    def apply(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = label.shape
        size = (max(1, int(w / h * height)), height)  # PIL wants (W, H)
        image = np.array(Image.fromarray(image).resize(size, Image.BICUBIC))
        label = np.array(Image.fromarray(label).resize(size, Image.NEAREST))
        return image, label

    return apply


def compose(*steps: EvalTransform) -> EvalTransform:
    def apply(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        for step in steps:
            image, label = step(image, label)
        return image, label

    return apply
