"""The embedded synthetic street world: procedural Cityscapes-labelled scenes rendered in named domains.

``render(seed, domain)`` lays out a scene from ``seed`` alone (so every domain shares the layout and the
label map) and restyles its plain daylight colours with ``STYLES[domain]``, whose random jitter comes from
a stream keyed by (seed, domain). ``day`` is the source domain (``desert`` the second source of
several-source runs); ``night``, ``fog``, ``snow`` and ``rain`` are the physically motivated shifts used for
evaluation; the rest are global restylings (tint, palette, contrast). Add a domain by registering
``STYLES[name] = fn(base_rgb, scene, rng) -> rgb`` (floats in [0, 1]).

Scenes are laid out by ``scene`` and the styles live in ``styles``; this module is the
public face of the world (domains, ``render``, ``SyntheticDataset``) and of its
``synthetic:DOMAIN[:N[:SEED]][:size=S]`` dataset specs: ``ENTRY``, which famix's package metadata names as
the ``synthetic`` entry point of the ``famix.datasets`` group, so ``build_dataset("synthetic:day")`` works
without importing the world first.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch.utils.data import Dataset

from famix.data.entry import DatasetEntry
from famix.world.scene import Scene, build_scene
from famix.world.styles import STYLES, Style

__all__ = [
    "DOMAINS",
    "ENTRY",
    "build_synthetic",
    "MINING_DOMAINS",
    "SECOND_SOURCE_DOMAIN",
    "SHIFTED_DOMAINS",
    "SOURCE_DOMAIN",
    "STYLES",
    "Style",
    "SyntheticDataset",
    "render",
]

SOURCE_DOMAIN = "day"
SHIFTED_DOMAINS = ("night", "fog", "snow", "rain")  # held out: only ever used for evaluation
# Styles named by the demo's mining vocabulary: the demo's segmenter (trained on day) never sees them as
# images, and their names never name an evaluation style.
MINING_DOMAINS = ("dusk", "sepia", "neon", "watercolor", "pastel", "monochrome", "desert")
# A second labelled source for several-source training (``data.train=[synthetic:day:N:S,
# synthetic:desert:N:S2]``, docs/sources.md), as SYNTHIA is to GTA5: the same kind of street in another
# look (dry colours, sand haze far away), never an evaluation style. It is also a mining word: a model
# trained on it has seen that style as images, and its distant haze is a little like fog's (nearer, grey).
SECOND_SOURCE_DOMAIN = "desert"
DOMAINS: tuple[str, ...] = tuple(STYLES)


def _entropy(seed: int) -> list[int]:
    # SeedSequence needs non-negative words; the sign word keeps -s and s distinct.
    seed = int(seed)
    return [abs(seed), int(seed < 0)]


def _scene(seed: int, size: tuple[int, int]) -> Scene:
    """The layout of scene ``seed`` (label, depth, light, day colours), shared by every domain."""
    return build_scene(np.random.default_rng(_entropy(seed)), size)


def render(
    seed: int, domain: str = SOURCE_DOMAIN, size: tuple[int, int] = (256, 256)
) -> tuple[np.ndarray, np.ndarray]:
    """Render scene ``seed`` in ``domain`` at ``size = (H, W)``.

    Returns (image uint8 [H, W, 3], label uint8 [H, W] of trainIds with 255 = ignore). The layout and the
    label depend on ``seed`` only; the image is a deterministic function of (seed, domain, size).
    """
    if domain not in STYLES:
        raise ValueError(f"unknown synthetic domain {domain!r}; valid domains: {', '.join(STYLES)}")
    scene = _scene(seed, size)
    style_rng = np.random.default_rng([*_entropy(seed), zlib.crc32(domain.encode())])
    rgb = np.asarray(STYLES[domain](scene.base, scene, style_rng), np.float32)
    x = np.clip(rgb.transpose(2, 0, 1), 0.0, 1.0)  # channel first, as the styles work
    x *= 255
    x += 0.5
    x = x.astype(np.uint8)
    return np.stack((x[0], x[1], x[2]), axis=-1), scene.label


class SyntheticDataset(Dataset):
    """``length`` procedural scenes in one domain; item i is scene ``seed * 1_000_003 + i``.

    Items are (image uint8 tensor [3, H, W], label int64 tensor [H, W]); ``size`` is (H, W). Datasets that
    share ``seed`` (and ``size``) show the same scenes and labels in every domain.
    """

    def __init__(
        self,
        domain: str = SOURCE_DOMAIN,
        length: int = 100,
        size: tuple[int, int] = (256, 256),
        seed: int = 0,
    ):
        if domain not in STYLES:
            raise ValueError(f"unknown synthetic domain {domain!r}; valid domains: {', '.join(STYLES)}")
        self.domain, self.length, self.size, self.seed = (
            domain,
            int(length),
            (int(size[0]), int(size[1])),
            seed,
        )
        self.name = f"synthetic:{domain}"

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes")
        image, label = render(self.seed * 1_000_003 + index, self.domain, self.size)
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(label.astype(np.int64))


def build_synthetic(parts: list[str]) -> SyntheticDataset:
    """A ``SyntheticDataset`` from the spec fields after ``synthetic:``: DOMAIN[:N[:SEED]][:size=S]."""
    usage = "synthetic:DOMAIN[:N[:SEED]][:size=S]"
    positional = [p for p in parts if "=" not in p]
    options = dict(p.split("=", 1) for p in parts if "=" in p)
    unknown = set(options) - {"size"}
    if unknown or len(positional) > 3:
        raise ValueError(f"synthetic spec fields {parts}: expected {usage} (options: size)")

    def number(text: str, what: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(
                f"synthetic:{':'.join(parts)}: {what} must be an integer, got {text!r} ({usage})"
            ) from None

    domain = positional[0] if positional else SOURCE_DOMAIN
    length = number(positional[1], "N (number of scenes)") if len(positional) > 1 else 100
    seed = number(positional[2], "SEED") if len(positional) > 2 else 0
    size = number(options.get("size", "256"), "size")
    if length < 1 or size < 8:
        raise ValueError(f"synthetic:{':'.join(parts)}: need N >= 1 scenes and size >= 8 pixels ({usage})")
    return SyntheticDataset(domain=domain, length=length, size=(size, size), seed=seed)


USAGE = "synthetic:DOMAIN[:N[:SEED]][:size=S]  (N scenes, default 100; SEED 0; S x S pixels, default 256)"
LAYOUT = (
    "  the embedded procedural street world, rendered on the fly (nothing on disk)\n"
    f"  source domain: {SOURCE_DOMAIN}; held-out shifts: {', '.join(SHIFTED_DOMAINS)};\n"
    f"  mining-word styles: {', '.join(MINING_DOMAINS)}; all domains: {', '.join(DOMAINS)}\n"
    f"  a second source to train on with {SOURCE_DOMAIN}: {SECOND_SOURCE_DOMAIN} (another SEED: other scenes)"
)
# the famix.datasets entry point "synthetic"
ENTRY = DatasetEntry(build=build_synthetic, usage=USAGE, layout=LAYOUT)
