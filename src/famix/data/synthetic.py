"""The embedded synthetic street world: procedural Cityscapes-labelled scenes rendered in named domains.

``render(seed, domain)`` lays out a scene from ``seed`` alone (so every domain shares the layout and the
label map) and restyles its plain daylight colours with ``STYLES[domain]``, whose random jitter comes from
a stream keyed by (seed, domain). ``day`` is the source domain; ``night``, ``fog``, ``snow`` and ``rain``
are the physically motivated shifts used for evaluation; the rest are global restylings (tint, palette,
contrast). Add a domain by registering ``STYLES[name] = fn(base_rgb, scene, rng) -> rgb`` (floats in [0, 1]).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from famix.data.synthetic_scene import (
    CAR,
    PERSON,
    ROAD,
    SIDEWALK,
    SKY,
    TERRAIN,
    VEGETATION,
    Scene,
    build_scene,
    smooth_noise,
)

SOURCE_DOMAIN = "day"
SHIFTED_DOMAINS = ("night", "fog", "snow", "rain")
_LUMA = np.array((0.299, 0.587, 0.114), np.float32)

Style = Callable[[np.ndarray, Scene, np.random.Generator], np.ndarray]


def _gray(rgb: np.ndarray) -> np.ndarray:
    return rgb @ _LUMA


def _saturate(rgb: np.ndarray, s: float) -> np.ndarray:
    g = _gray(rgb)[..., None]
    return g + (rgb - g) * s


def _hue_rotation(angle: float) -> np.ndarray:
    """3x3 matrix rotating colours about the grey axis (keeps grey grey); apply as ``rgb @ m``."""
    c, s, k = np.cos(angle), np.sin(angle), 1 / np.sqrt(3)
    a = np.full((3, 3), k * k * (1 - c))
    a += np.eye(3) * c + np.array([[0, -k, k], [k, 0, -k], [-k, k, 0]]) * s
    return a.T.astype(np.float32)


def _blur(a: np.ndarray, r: int) -> np.ndarray:
    """Box blur of radius ``r`` over the two leading axes (running sums; windows shrink at the border)."""
    if r < 1:
        return a
    for axis in (0, 1):
        n = a.shape[axis]
        c = np.cumsum(a, axis=axis, dtype=np.float32)
        c = np.concatenate([np.zeros_like(c[:1] if axis == 0 else c[:, :1]), c], axis=axis)
        i = np.arange(n)
        hi, lo = np.minimum(i + r + 1, n), np.maximum(i - r, 0)
        shape = (n,) + (1,) * (a.ndim - 1) if axis == 0 else (1, n) + (1,) * (a.ndim - 2)
        a = (np.take(c, hi, axis=axis) - np.take(c, lo, axis=axis)) / (hi - lo).reshape(shape).astype(np.float32)
    return a


def _sky_gradient(scene: Scene, top, bottom) -> np.ndarray:
    """[H, 1, 3] colour per row fading from ``top`` at the image top to ``bottom`` at the horizon."""
    h = scene.label.shape[0]
    t = np.clip((np.arange(h, dtype=np.float32) + 0.5) / max(scene.horizon, 1.0), 0, 1)[:, None, None]
    return np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t


def _with_sky(rgb: np.ndarray, scene: Scene, sky: np.ndarray) -> np.ndarray:
    return np.where((scene.label == SKY)[..., None], sky, rgb)


def _glow(scene: Scene, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(emitted colour, its halo): two box passes approximate a soft Gaussian bloom."""
    emit = scene.emission()
    r = max(1, round(radius * min(scene.label.shape) / 256))
    return emit, _blur(_blur(emit, r), r)


def _day(base, scene, rng):
    wb = 1 + rng.uniform(-0.06, 0.06, 3).astype(np.float32)
    contrast = rng.uniform(0.9, 1.12)
    return (base * wb * rng.uniform(0.85, 1.15) - 0.5) * contrast + 0.5


def _night(base, scene, rng):
    tint = np.array((0.7, 0.85, 1.25), np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    out = base * rng.uniform(0.15, 0.35) * tint
    out = _with_sky(out, scene, _sky_gradient(scene, (0.01, 0.01, 0.03), (0.05, 0.06, 0.1)) * rng.uniform(0.6, 1.4))
    emit, halo = _glow(scene, rng.uniform(4, 8))
    out = np.maximum(out, emit * rng.uniform(0.8, 1.0)) + halo * rng.uniform(1.5, 3.0)
    return out + rng.standard_normal(out.shape[:2], dtype=np.float32)[..., None] * rng.uniform(0.01, 0.03)


def _fog(base, scene, rng):
    grey = rng.uniform(0.68, 0.85) + rng.uniform(-0.02, 0.02, 3).astype(np.float32)
    keep = np.exp(-scene.depth / rng.uniform(18.0, 55.0))[..., None]
    out = (base * rng.uniform(0.85, 1.0)) * keep + grey * (1 - keep)
    return _blur(out, 1) * 0.7 + out * 0.3


def _snow(base, scene, rng):
    label, (h, w) = scene.label, scene.label.shape
    white = np.array((0.93, 0.95, 0.98), np.float32) * rng.uniform(0.9, 1.05)
    out = _saturate(base, rng.uniform(0.5, 0.8)) * np.array((0.95, 0.98, 1.05), np.float32)
    patches = smooth_noise(rng, h, w, 10.0)
    cover = np.zeros((h, w), np.float32)
    cover[label == TERRAIN] = 0.95
    cover[label == SIDEWALK] = 0.8
    road = label == ROAD
    cover[road] = np.clip(rng.uniform(0.45, 0.8) + 0.25 * patches[road], 0, 1)  # slush and tyre tracks
    veg = label == VEGETATION
    cover[veg] = np.clip(patches[veg] * 0.6 - 0.1, 0, 0.9)
    # snow settles on the upper edge of every object: pixels whose upper neighbours are another class
    top = np.zeros((h, w), bool)
    top[1:] = label[1:] != label[:-1]
    for k in range(1, max(2, h // 100)):
        top[k:] |= top[:-k].copy()
    top &= (label != SKY) & (label != ROAD) & (label != PERSON) & (label != 255)
    cover[top] = 0.95
    out = out + (white - out) * cover[..., None]
    out = _with_sky(out, scene, _sky_gradient(scene, (0.62, 0.64, 0.68), (0.82, 0.83, 0.85)) * rng.uniform(0.9, 1.1))
    keep = np.exp(-scene.depth / rng.uniform(60.0, 150.0))[..., None]
    out = out * keep + 0.82 * (1 - keep)
    n = int(h * w * rng.uniform(0.004, 0.012))  # flakes, some two pixels tall
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    out[ys, xs] = out[ys, xs] * 0.2 + 0.8 * white
    ys2 = np.minimum(ys + 1, h - 1)[: n // 2]
    out[ys2, xs[: n // 2]] = out[ys2, xs[: n // 2]] * 0.4 + 0.6 * white
    return out


def _rain(base, scene, rng):
    h, w = scene.label.shape
    out = _saturate(base, rng.uniform(0.45, 0.7)) * rng.uniform(0.55, 0.8) * np.array((0.95, 0.98, 1.05),
                                                                                        np.float32)
    out = _with_sky(out, scene, _sky_gradient(scene, (0.42, 0.44, 0.47), (0.58, 0.59, 0.6)) * rng.uniform(0.85, 1.1))
    # wet ground mirrors what stands above it: reflect rows about the horizon, smeared vertically
    rows = np.clip(2 * scene.horizon - np.arange(h) - 1, 0, h - 1).astype(np.intp)
    refl = _blur(out[rows], 2)
    wet = np.isin(scene.label, (ROAD, SIDEWALK)).astype(np.float32)[..., None] * rng.uniform(0.3, 0.55)
    out = out * (1 - wet) + refl * wet
    keep = np.exp(-scene.depth / rng.uniform(80.0, 200.0))[..., None]
    out = out * keep + 0.55 * (1 - keep)
    n, length = int(h * w * rng.uniform(0.002, 0.005)), max(3, int(h * rng.uniform(0.04, 0.09)))
    slant = rng.uniform(-0.35, 0.35)
    k = np.arange(length)
    ys = rng.integers(-length, h, n)[:, None] + k
    xs = rng.integers(0, w, n)[:, None] + np.rint(slant * k).astype(np.intp)
    ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    out[ys[ok], xs[ok]] = out[ys[ok], xs[ok]] * 0.65 + 0.35 * 0.85
    return out


def _dusk(base, scene, rng):
    out = base * rng.uniform(0.45, 0.7) * np.array((1.12, 0.8, 0.68), np.float32)
    sky = _sky_gradient(scene, (0.25, 0.2, 0.45), (1.0, 0.55, 0.28)) * rng.uniform(0.8, 1.1)
    out = _with_sky(out, scene, sky * (1 + 0.3 * (scene.base - scene.base.mean())))
    emit, halo = _glow(scene, 4)
    return out + emit * 0.3 + halo * rng.uniform(0.5, 1.2)


def _sepia(base, scene, rng):
    g = _gray(base)[..., None]
    tone = np.array((1.07, 0.74, 0.43), np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    out = (g - 0.5) * rng.uniform(0.9, 1.3) + 0.55
    h, w = g.shape[:2]
    vy, vx = np.linspace(-1, 1, h, dtype=np.float32)[:, None], np.linspace(-1, 1, w, dtype=np.float32)
    vignette = 1 - rng.uniform(0.15, 0.35) * (vy**2 + vx**2)[..., None] / 2
    return out * tone * vignette


def _neon(base, scene, rng):
    keys = rng.permutation(np.array(((0.05, 0.0, 0.12), (0.9, 0.1, 0.8), (0.1, 0.9, 1.0), (1.0, 0.95, 0.3),
                                     (0.3, 0.1, 0.9)), np.float32))[:4]
    keys[0] = (0.04, 0.0, 0.1)  # always start from near-black so the palette keeps its contrast
    lum = np.clip(_gray(base) * rng.uniform(1.0, 1.4), 0, 1)
    lut = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, 4), keys[:, c]) for c in range(3)], 1)
    mapped = lut.astype(np.float32)[(lum * 255).astype(np.intp)]
    vivid = np.clip(_saturate(base, 2.2), 0, 1) @ _hue_rotation(rng.uniform(-np.pi, np.pi))
    out = mapped * 0.7 + vivid * 0.3
    emit, halo = _glow(scene, 3)
    return out + halo * 0.8


def _watercolor(base, scene, rng):
    h, w = scene.label.shape
    soft = _blur(base, max(1, round(min(h, w) / 128)))
    levels = rng.integers(5, 10)
    out = np.floor(soft * levels + 0.5) / levels * 0.6 + soft * 0.4
    out = 1 - (1 - out) * rng.uniform(0.6, 0.8)  # thin washes of pigment on white paper
    paper = 1 + 0.05 * smooth_noise(rng, h, w, 3.0)[..., None] + 0.04 * smooth_noise(rng, h, w, 25.0)[..., None]
    edges = np.zeros((h, w), bool)
    edges[1:] |= scene.label[1:] != scene.label[:-1]
    edges[:, 1:] |= scene.label[:, 1:] != scene.label[:, :-1]
    return out * paper * (1 - 0.25 * edges[..., None])


def _pastel(base, scene, rng):
    tint = np.array(rng.uniform(0.85, 1.0, 3), np.float32)
    out = _saturate(base, rng.uniform(0.4, 0.7)) @ _hue_rotation(rng.uniform(-0.4, 0.4))
    return out * rng.uniform(0.45, 0.6) + tint * rng.uniform(0.4, 0.5)


def _monochrome(base, scene, rng):
    g = np.clip(_gray(base), 0, 1) ** rng.uniform(0.7, 1.4)
    g = (g - 0.5) * rng.uniform(0.9, 1.4) + 0.5
    tint = 1 + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    return g[..., None] * tint


def _desert(base, scene, rng):
    label = scene.label
    sand = np.array((0.86, 0.72, 0.5), np.float32) * rng.uniform(0.9, 1.05)
    out = base * np.array((1.15, 1.0, 0.72), np.float32) * rng.uniform(1.0, 1.15)
    dry = np.where(label == TERRAIN, 0.75, np.where(label == VEGETATION, 0.35, 0.0)).astype(np.float32)[..., None]
    out = out + (sand * (0.8 + 0.4 * _gray(base)[..., None]) - out) * dry
    out = _with_sky(out, scene, _sky_gradient(scene, (0.72, 0.72, 0.66), (0.95, 0.86, 0.68)))
    keep = np.exp(-scene.depth / rng.uniform(70.0, 200.0))[..., None]
    return out * keep + sand * (1 - keep)


STYLES: dict[str, Style] = {
    "day": _day,
    "night": _night,
    "fog": _fog,
    "snow": _snow,
    "rain": _rain,
    "dusk": _dusk,
    "sepia": _sepia,
    "neon": _neon,
    "watercolor": _watercolor,
    "pastel": _pastel,
    "monochrome": _monochrome,
    "desert": _desert,
}
DOMAINS: tuple[str, ...] = tuple(STYLES)


def _entropy(seed: int) -> list[int]:
    # SeedSequence needs non-negative words; the sign word keeps -s and s distinct.
    seed = int(seed)
    return [abs(seed), int(seed < 0)]


def render(seed: int, domain: str = SOURCE_DOMAIN, size: tuple[int, int] = (256, 256)) -> tuple[np.ndarray, np.ndarray]:
    """Render scene ``seed`` in ``domain`` at ``size = (H, W)``.

    Returns (image uint8 [H, W, 3], label uint8 [H, W] of trainIds with 255 = ignore). The layout and the
    label depend on ``seed`` only; the image is a deterministic function of (seed, domain, size).
    """
    if domain not in STYLES:
        raise ValueError(f"unknown synthetic domain {domain!r}; valid domains: {', '.join(STYLES)}")
    scene = build_scene(np.random.default_rng(_entropy(seed)), size)
    style_rng = np.random.default_rng([*_entropy(seed), zlib.crc32(domain.encode())])
    rgb = STYLES[domain](scene.base, scene, style_rng)
    return (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), scene.label


class SyntheticDataset(Dataset):
    """``length`` procedural scenes in one domain; item i is scene ``seed * 1_000_003 + i``.

    Items are (image uint8 tensor [3, H, W], label int64 tensor [H, W]); ``size`` is (H, W). Datasets that
    share ``seed`` (and ``size``) show the same scenes and labels in every domain.
    """

    def __init__(self, domain: str = SOURCE_DOMAIN, length: int = 100, size: tuple[int, int] = (256, 256),
                 seed: int = 0):
        if domain not in STYLES:
            raise ValueError(f"unknown synthetic domain {domain!r}; valid domains: {', '.join(STYLES)}")
        self.domain, self.length, self.size, self.seed = domain, int(length), (int(size[0]), int(size[1])), seed
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
