"""The source's style reference: what ``famix diagnose``'s out-of-domain score measures from.

An image's *style statistics* are the channel means and standard deviations of the segmenter's style map
(the map the restyle hook sees: a ResNet's layer1, a ViT's patch embedding, ConvNeXt's stage 0). The source
reference is their mean and spread over up to :data:`REFERENCE_IMAGES` source images spread evenly over the
training sources (several sources: over their concatenation, in ``data.train``'s order). ``famix train``
stores it in every checkpoint it writes at a validation step (key :data:`KEY`), so ``famix diagnose`` needs
no source data; for a checkpoint without it (older famix, an official one, a save between validations)
diagnose computes the same reference from the source data where it is readable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from famix.engine.inference import eval_mode, model_input
from famix.progress import progress_bar

KEY = "source_style"  # the checkpoint entry: {"mean": [2C], "std": [2C], "images": n} (float32)
REFERENCE_IMAGES = 32  # source images a reference is computed from
EPS = 1e-5  # added to the source spread of a statistic (a constant channel)


def style_vector(f: torch.Tensor) -> torch.Tensor:
    """A style map [B, C, h, w] -> each image's style statistics [B, 2C]: channel means, then channel
    standard deviations (population, over h x w)."""
    flat = f.float().flatten(2)
    return torch.cat([flat.mean(2), flat.std(2, correction=0)], dim=1)


def ood_score(v: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Style statistics [B, D] against the source's mean [D] and spread [D] -> [B]: the root mean square of
    the z-scores ``(v - mean) / (std + EPS)``: 0 at the source's mean, ~1 for a typical source image."""
    return ((v - mean) / (std + EPS)).pow(2).mean(1).sqrt()


def spread_picks(n: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(n)``, first and last included (all when n <= count)."""
    k = min(count, n)
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})


def source_reference(
    model, datasets: Sequence, count: int = REFERENCE_IMAGES, device=None, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The source's (mean [2C], std [2C]) of per-image style statistics of ``model`` (float32, eval mode)
    over ``count`` images spread evenly over the concatenation of ``datasets`` (items ``(image uint8
    [3, H, W], label)``)."""
    sizes = [len(d) for d in datasets]
    picks = spread_picks(sum(sizes), count)
    device = device if device is not None else next(model.parameters()).device
    vectors = []
    with eval_mode(model), torch.inference_mode():
        for i in progress_bar(picks, desc="source statistics", disable=not progress):
            k = 0
            while i >= sizes[k]:  # the dataset holding concatenated index i
                i, k = i - sizes[k], k + 1
            image, _ = datasets[k][i]
            x = model_input(model, image[None].to(device))
            vectors.append(style_vector(model.style_features(x)).cpu()[0])
    v = torch.stack(vectors)
    return v.mean(0), v.std(0, correction=0)


def reference_entry(model, datasets: Sequence, count: int = REFERENCE_IMAGES) -> dict:
    """The checkpoint entry :data:`KEY` for ``model`` on the training sources (``data.train``'s datasets, in
    order; the checkpoint's config names them)."""
    mean, std = source_reference(model, datasets, count)
    return {"mean": mean, "std": std, "images": len(spread_picks(sum(len(d) for d in datasets), count))}


def stored_reference(ckpt: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (mean, std) a checkpoint stores (:data:`KEY`), or None when it stores none."""
    entry = ckpt.get(KEY)
    if not isinstance(entry, dict) or "mean" not in entry or "std" not in entry:
        return None
    return entry["mean"].float(), entry["std"].float()


def to_json(entry: dict | None) -> dict | None:
    """A checkpoint's :data:`KEY` entry for a saved folder's config.json (lists of floats: float32 values
    written as float64 reprs, so :func:`from_json` gives them back exactly), or None."""
    if not isinstance(entry, dict) or "mean" not in entry:
        return None
    return {"mean": entry["mean"].tolist(), "std": entry["std"].tolist(), "images": int(entry["images"])}


def from_json(value: dict | None) -> dict | None:
    """The inverse of :func:`to_json`: the checkpoint entry, float32 tensors."""
    if not value:
        return None
    mean, std = (torch.tensor(value[k], dtype=torch.float32) for k in ("mean", "std"))
    return {"mean": mean, "std": std, "images": int(value.get("images", 0))}
