"""Conditions named in words, for a model and a set of images: which CLIP weights speak for the model, and
CLIP's ranking of condition words for a whole set (``famix diagnose``, ``famix adapt --target auto``, the
app's conditions box: the per-image pieces are ``famix.style.conditions``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from famix.data.inputs import list_images
from famix.data.readers import read_image
from famix.engine.checkpoint import model_config
from famix.engine.checks import check_specs
from famix.models.clip import build_clip, clip_preprocess_size, packaged_weights
from famix.normalization import Normalization
from famix.style.conditions import CONDITIONS, candidates, image_embeddings, rate
from famix.style.prompts import TextEmbedder


def clip_weights(ckpt: dict, given: str | None) -> str | None:
    """The CLIP weights that speak for a checkpoint's model: ``given``, else the file or open_clip tag its
    config names where it can be read here, else the package's weights of its backbone (the tiny CLIPs);
    None when there are none (the caller says to pass ``--weights``)."""
    if given is not None:
        return given
    model = model_config(ckpt)
    stored = model.weights
    if stored and (Path(stored).is_file() or not any(c in stored for c in "/\\.")):
        return stored
    return packaged_weights(model.backbone)


def load_clip(backbone: str, weights: str, device) -> torch.nn.Module:
    """The frozen CLIP of ``backbone`` with ``weights`` (fp32, eval mode, no gradients)."""
    return build_clip(backbone, weights, device=device, seed=0).requires_grad_(False)


@dataclass
class Ranking:
    """CLIP's rating of N images against K descriptions: ``texts`` [K], ``per_image`` [N, K] probabilities
    (each row sums to 1); the set's score of a description is its mean over the images."""

    texts: list[str]
    per_image: torch.Tensor

    @property
    def scores(self) -> dict[str, float]:
        """{description: mean probability over the images}, best first."""
        mean = self.per_image.double().mean(0) if len(self.per_image) else torch.zeros(len(self.texts))
        pairs = sorted(zip(self.texts, mean.tolist(), strict=True), key=lambda p: -p[1])
        return dict(pairs)

    @property
    def top(self) -> str:
        return next(iter(self.scores))

    def to_dict(self) -> dict:
        return {"images": len(self.per_image), "scores": {t: round(s, 6) for t, s in self.scores.items()}}


def rank(
    clip: torch.nn.Module,
    images: Iterable[torch.Tensor],
    normalization: Normalization,
    words: Sequence[str] = (),
    vocabulary: Sequence[str] = CONDITIONS,
) -> Ranking:
    """CLIP's ranking of the user's ``words`` and the ``vocabulary`` for a set of images (uint8 [3, H, W]
    each, any sizes): each image rated on its own (``style.conditions.rate`` of its embedding), the set's
    score of a description the mean of its images' probabilities."""
    texts = candidates(words, vocabulary)
    embed = TextEmbedder(clip)(texts)  # [K, D]
    scale, size = float(clip.logit_scale.exp()), clip_preprocess_size(clip)
    rows = [rate(image_embeddings(clip, x[None], normalization, size), embed, scale)[0].cpu() for x in images]
    return Ranking(texts, torch.stack(rows) if rows else torch.zeros(0, len(texts)))


def image_set(entry: str, labels, option: str = "--data") -> tuple[str, list]:
    """(a display name, the items [(name, uint8 image [3, H, W] loader, label loader or None)]) of an
    ``option`` entry: an existing file, folder or glob of images (no labels), else a dataset spec (with
    labels); an entry that names nothing is refused naming ``option``."""
    if Path(entry).exists() or any(c in entry for c in "*?["):
        try:
            files = list_images([entry])
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{option}: {e}") from None
        return Path(entry).name or entry, [(p.stem, p, None) for p in files]
    dataset = check_specs([entry], option, labels)[entry]
    return entry, [(f"{i:05d}", i, dataset) for i in range(len(dataset))]


def load_item(item) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An item of :func:`image_set`, read: (uint8 image [3, H, W], label [H, W] or None)."""
    _, where, dataset = item
    if dataset is None:
        return read_image(where), None
    image, label = dataset[where]
    return image, label
