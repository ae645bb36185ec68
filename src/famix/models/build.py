"""One way in: a config -> a SegmentationNetwork (and the CLIP model used for mining)."""

from __future__ import annotations

from typing import Protocol

import torch

from famix.data.label_sets import model_labels
from famix.models.clip import build_clip, clip_normalization
from famix.models.freeze import apply_freeze
from famix.models.segmenter import SegmentationNetwork
from famix.normalization import Normalization


class SegmenterSpec(Protocol):
    """What :func:`build_segmenter` reads: the fields of ``famix.config.ModelConfig`` (named here as a
    protocol because ``models/`` is a leaf that never imports the config layer)."""

    backbone: str
    weights: str | None
    classes: dict | None
    num_classes: int
    class_names: list[str]
    output_stride: int
    dilation: str
    freeze: str
    mean: list[float] | None
    std: list[float] | None


def normalization(cfg: SegmenterSpec) -> Normalization:
    """The input normalisation of a ``ModelConfig``'s CLIP weights (``clip.clip_normalization``: the given
    mean / std, an open_clip tag's, else OpenAI's)."""
    return clip_normalization(cfg.backbone, cfg.weights, cfg.mean, cfg.std)


def build_segmenter(cfg: SegmenterSpec, seed: int | None = 0) -> SegmentationNetwork:
    """The SegmentationNetwork for a ``ModelConfig``: CLIP image tower (weights from ``cfg.weights``) +
    DeepLabv3+ head, frozen by ``cfg.freeze``, taking inputs normalised as the weights expect
    (``clip_normalization``: the config's mean / std, an open_clip tag's, else OpenAI's). ``seed`` makes
    random initialisation reproducible."""
    labels = model_labels(cfg.classes, cfg.class_names, cfg.num_classes)  # the three agree, or refused there
    clip = build_clip(cfg.backbone, cfg.weights, seed=seed)
    with torch.random.fork_rng(
        devices=[]
    ):  # the head's random init, reproducible without global side effects
        if seed is not None:
            torch.manual_seed(seed + 1)
        norm = normalization(cfg)
        model = SegmentationNetwork(clip.visual, len(labels), cfg.output_stride, cfg.dilation, norm)
    apply_freeze(model, cfg.freeze)
    return model
