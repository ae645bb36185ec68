"""Joint image/label transforms: training (torchvision transforms v2, random crop / jitter / flip), the
evaluation protocol's (centre crop-pad, resize to a height; numpy, before tensors) and CLIP normalisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from famix.data.trainids import IGNORE_INDEX
from famix.normalization import OPENAI_NORMALIZATION

# (image uint8 [H, W, 3], trainIds uint8 [H, W]) -> same, applied before conversion to tensors.
EvalTransform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def normalize(
    image: torch.Tensor,
    mean: Sequence[float] = OPENAI_NORMALIZATION.mean,
    std: Sequence[float] = OPENAI_NORMALIZATION.std,
) -> torch.Tensor:
    """uint8 (or float in [0, 1]) [..., 3, H, W] -> float32 [..., 3, H, W] normalised per RGB channel with
    ``mean`` / ``std`` (the CLIP weights' own: OpenAI's by default; a segmenter's ``normalization``)."""
    mean = torch.tensor(tuple(mean), device=image.device).view(3, 1, 1)
    std = torch.tensor(tuple(std), device=image.device).view(3, 1, 1)
    x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    return (x - mean) / std


# A training item as a data-loader worker hands it over: the crop and its label (uint8, so a worker ships
# 1/5 of the float bytes) and the item's 6 colour-jitter parameters, applied on the device by
# ``color_jitter``: brightness, contrast, saturation factors, then the order of those three operations.
_NO_JITTER = (1.0, 1.0, 1.0, 0.0, 1.0, 2.0)


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(0, high, size=(), generator=generator))


def random_crop(
    image: torch.Tensor, label: torch.Tensor, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``size`` x ``size`` crop of image [3, H, W] and label [H, W]; a side shorter than ``size``
    is first padded by the shortfall on both ends (image 0, label ignore). torchvision's
    ``v2.RandomCrop(size, pad_if_needed=True)``, with its random draws (top, then left) from ``generator``."""
    h, w = label.shape
    dy, dx = max(size - h, 0), max(size - w, 0)
    if dy or dx:
        image = torch.nn.functional.pad(image, (dx, dx, dy, dy), value=0)
        label = torch.nn.functional.pad(label, (dx, dx, dy, dy), value=IGNORE_INDEX)
        h, w = h + 2 * dy, w + 2 * dx
    top = _randint(h - size + 1, generator) if h > size else 0
    left = _randint(w - size + 1, generator) if w > size else 0
    return image[:, top : top + size, left : left + size], label[top : top + size, left : left + size]


def jitter_params(jitter: float, generator: torch.Generator) -> torch.Tensor:
    """[6] float: brightness, contrast, saturation factors in [max(0, 1 - jitter), 1 + jitter] and the order
    of the three operations, drawn as ``v2.ColorJitter(jitter, jitter, jitter)`` draws them."""
    if jitter <= 0:
        return torch.tensor(_NO_JITTER)
    order = [i for i in torch.randperm(4, generator=generator).tolist() if i < 3]  # 3 = hue, unused
    lo, hi = max(0.0, 1 - jitter), 1 + jitter
    factors = [float(torch.empty(1).uniform_(lo, hi, generator=generator)) for _ in range(3)]
    return torch.tensor(factors + [float(i) for i in order])


def _grey(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W], ITU-R 601 luma as torchvision's rgb_to_grayscale."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def color_jitter(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Colour jitter of a batch, each image with its own parameters, on whatever device holds it.

    images: uint8 or float in [0, 1], [B, 3, H, W]; params: [B, 6] from :func:`jitter_params`.
    Returns float32 in [0, 1], [B, 3, H, W]: torchvision's adjust_brightness / adjust_contrast /
    adjust_saturation on float images, in each image's order (torchvision's uint8 kernels round to uint8
    between operations; this works in float throughout). No Python loop over images, no host sync.
    """
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    b = x.shape[0]
    params = params.to(x.device, torch.float32)
    order = params[:, 3:].long()  # [B, 3]: the operation at each position
    for position in range(3):
        op = order[:, position].view(b, 1, 1, 1)
        f = params[:, :3].gather(1, order[:, position : position + 1]).view(b, 1, 1, 1)
        grey = _grey(x)  # [B, 1, H, W]
        # what each image blends with: black (brightness), its mean grey (contrast), its grey (saturation)
        target = torch.where(op == 0, 0.0, torch.where(op == 1, grey.mean((2, 3), keepdim=True), grey))
        x = (f * x + (1 - f) * target).clamp_(0, 1)
    return x


def train_transform(crop: int, jitter: float = 0.8, hflip: float = 0.5):
    """Source training transform (method.md section 5), the worker's half: random crop (image padded 0,
    label padded 255), horizontal flip, and the colour-jitter parameters (jitter runs on the device,
    :func:`color_jitter`). ``(uint8 image [3, H, W], label [H, W], generator)`` ->
    ``(uint8 image [3, crop, crop], uint8 label [crop, crop], params [6])``; the random draws come from
    ``generator`` in ``v2.Compose([RandomCrop, ColorJitter, RandomHorizontalFlip])``'s order."""

    def apply(image: torch.Tensor, label: torch.Tensor, generator: torch.Generator):
        image, label = random_crop(image, label, crop, generator)
        return _jitter_flip(image, label, jitter, hflip, generator)

    return apply


def _jitter_flip(image, label, jitter: float, hflip: float, generator: torch.Generator):
    params = jitter_params(jitter, generator)
    if hflip > 0 and float(torch.rand(1, generator=generator)) < hflip:
        image, label = image.flip(-1), label.flip(-1)
    return image.contiguous(), label.to(torch.uint8).contiguous(), params


def synthia_transform(crop: int, jitter: float = 0.8, hflip: float = 0.5):
    """SYNTHIA's training transform (method.md section 5), scaled to ``crop``, the worker's half: random
    scale in [0.5, 2.0] (image bicubic, label nearest), random crop of round(crop * 720 / 768) (image
    padded 0, label padded 255), resize to crop x crop (image bilinear, label nearest), flip, and the
    colour-jitter parameters. Same inputs and outputs as :func:`train_transform`."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    size = round(crop * 720 / 768)

    def apply(image: torch.Tensor, label: torch.Tensor, generator: torch.Generator):
        # RandomSizeAndCrop: one scale for both sides
        scale = 0.5 + 1.5 * float(torch.rand((), generator=generator))
        h, w = image.shape[-2:]
        out = [max(1, int(h * scale)), max(1, int(w * scale))]
        image = TF.resize(image, out, InterpolationMode.BICUBIC, antialias=True)
        label = TF.resize(label[None], out, InterpolationMode.NEAREST)[0]
        image, label = random_crop(image, label, size, generator)
        image = TF.resize(image, [crop, crop], InterpolationMode.BILINEAR, antialias=True)
        label = TF.resize(label[None], [crop, crop], InterpolationMode.NEAREST)[0]
        return _jitter_flip(image, label, jitter, hflip, generator)

    return apply


def source_transform(dataset_name: str, crop: int, jitter: float = 0.8, hflip: float = 0.5):
    """The training transform of a source dataset (method.md section 5) by spec name: SYNTHIA's
    size-and-crop recipe for ``synthia``, random crop + flip (+ device jitter) for everything else (GTA5,
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
