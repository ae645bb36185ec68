"""How CLIP rates an image against conditions named in words ("heavy snow at night"): the image's CLIP
embedding against each description's (averaged over the 80 ImageNet templates, as style mining's prompts),
as a softmax over the descriptions at CLIP's own temperature.

``CONDITIONS`` is the shipped vocabulary of standard driving conditions; a user's words join it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from famix.normalization import Normalization

# Standard conditions a deployment meets (ACDC's four, the day / dusk of BDD100K and Mapillary) and the
# miniature world's held-out ones (the same words)
CONDITIONS = ("day", "night", "fog", "snow", "rain", "dusk", "overcast", "sunny")


def square_crops(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (or float) images [B, 3, H, W] -> [B, n, 3, size, size] float in [0, 1]: each image resized so
    that its short side is ``size`` (bilinear, antialiased), then cut into the ``n = ceil(long / short)``
    squares that cover it evenly (first at one end, last at the other), so a wide street photo is seen
    whole rather than centre-cropped."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    long = max(nh, nw)
    n = -(-long // size)
    starts = [round(i * (long - size) / max(n - 1, 1)) for i in range(n)]
    if nw >= nh:
        crops = [x[..., :size, s : s + size] for s in starts]
    else:
        crops = [x[..., s : s + size, :size] for s in starts]
    return torch.stack(crops, dim=1)


@torch.no_grad()
def image_embeddings(clip: torch.nn.Module, images: torch.Tensor, normalization: Normalization, size: int):
    """CLIP image embeddings of images [B, 3, H, W] (uint8): the unit-norm mean of the unit-norm embeddings
    of :func:`square_crops`, [B, D]."""
    crops = square_crops(images, size)  # [B, n, 3, s, s]
    b, n = crops.shape[:2]
    mean = torch.tensor(normalization.mean).view(1, 3, 1, 1)
    std = torch.tensor(normalization.std).view(1, 3, 1, 1)
    x = ((crops.flatten(0, 1) - mean) / std).to(next(clip.parameters()).device)
    e = F.normalize(clip.encode_image(x).float(), dim=-1).view(b, n, -1)  # [B, n, D]
    return F.normalize(e.mean(1), dim=-1)


def rate(image: torch.Tensor, texts: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """image [B, D], texts [K, D] (unit-norm) -> [B, K] probabilities: softmax over the K descriptions of
    ``logit_scale`` times the cosine similarity (CLIP's zero-shot classifier)."""
    return torch.softmax(logit_scale * image.float() @ texts.float().T, dim=-1)


def candidates(words: Sequence[str], vocabulary: Sequence[str] = CONDITIONS) -> list[str]:
    """The descriptions to rate: the user's ``words`` (stripped, empty ones dropped), then the vocabulary's
    words that are not among them, in order."""
    given = [w.strip() for w in words if w and w.strip()]
    return given + [v for v in vocabulary if v not in given]
