"""The styles of the synthetic world: one function per domain that restyles a scene's plain day colours.

A style is ``fn(base_rgb, scene, rng) -> rgb`` on [H, W, 3] floats in [0, 1]; ``STYLES`` maps each domain
name to its style. ``day`` only jitters exposure and contrast; ``night``, ``fog``, ``snow`` and ``rain`` model
their physics (emitted light, Koschmieder haze, settled snow, wet reflections and streaks) from the scene's
depth, labels and light; the others are global restylings (tint, palette, contrast). ``synthetic.render``
applies them; the small colour and filter helpers here are shared by the styles only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from famix.world.canvas import (
    PERSON,
    ROAD,
    SIDEWALK,
    SKY,
    TERRAIN,
    VEGETATION,
    Scene,
    noise_bank,
    noise_window,
    resize,
)

_LUMA = (0.299, 0.587, 0.114)

Style = Callable[[np.ndarray, Scene, np.random.Generator], np.ndarray]

# Styles take and return [H, W, 3] arrays, but the built-in ones work on the channel-first memory behind
# them (``_chw``): per-pixel maths then streams over whole planes instead of 3-element rows, several times
# faster in numpy. They also update in place where they can, as fresh full-size temporaries are costly.


def _chw(rgb: np.ndarray) -> np.ndarray:
    return rgb.transpose(2, 0, 1)


def _hwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(1, 2, 0)


def _vec(*v) -> np.ndarray:
    """A per-channel constant shaped to broadcast over [3, H, W]."""
    return np.asarray(v, np.float32).reshape(3, 1, 1)


def _gray(x: np.ndarray) -> np.ndarray:
    return x[0] * np.float32(_LUMA[0]) + x[1] * np.float32(_LUMA[1]) + x[2] * np.float32(_LUMA[2])


def _saturate(x: np.ndarray, s: float) -> np.ndarray:
    """Scale saturation by ``s`` (0 = grey, 1 = unchanged) around the luma of each pixel."""
    g = _gray(x)
    out = x - g
    out *= np.float32(s)
    out += g
    return out


def _hue_rotate(x: np.ndarray, angle: float) -> np.ndarray:
    """Rotate colours by ``angle`` radians about the grey axis (greys stay grey)."""
    c, s, k = np.cos(angle), np.sin(angle), 1 / np.sqrt(3)
    m = np.full((3, 3), k * k * (1 - c)) + np.eye(3) * c + np.array([[0, -k, k], [k, 0, -k], [-k, k, 0]]) * s
    return (m.astype(np.float32) @ x.reshape(3, -1)).reshape(x.shape)


def _mix(x: np.ndarray, target, amount) -> np.ndarray:
    """In place: x <- x + (target - x) * amount (arrays or scalars broadcasting over [3, H, W])."""
    d = np.subtract(target, x, dtype=np.float32)
    d *= amount
    x += d
    return x


def _box3(a: np.ndarray) -> np.ndarray:
    """3x3 box filter over the last two axes, edges replicated (shifted in-place adds, no padding copies)."""
    v = a.copy()
    v[..., 1:, :] += a[..., :-1, :]
    v[..., :-1, :] += a[..., 1:, :]
    v[..., 0, :] += a[..., 0, :]
    v[..., -1, :] += a[..., -1, :]
    out = v.copy()
    out[..., 1:] += v[..., :-1]
    out[..., :-1] += v[..., 1:]
    out[..., 0] += v[..., 0]
    out[..., -1] += v[..., -1]
    out *= np.float32(1 / 9)
    return out


def _blur(a: np.ndarray, r: int) -> np.ndarray:
    """Approximate Gaussian blur of radius ~``r`` over the last two axes.

    Radii 1-2 repeat a 3x3 box; larger ones average-pool by ``r``, smooth the small image and resize it back
    bilinearly, which costs about the same whatever the radius.
    """
    h, w = a.shape[-2:]
    if r < 1:
        return a
    if r <= 2 or h < 2 * r or w < 2 * r:
        for _ in range(r):
            a = _box3(a)
        return a
    sh, sw = h // r, w // r
    lead = a.shape[:-2]
    small = a[..., : sh * r, : sw * r].reshape(*lead, sh, r, sw * r).sum(axis=-2)
    small = small.reshape(*lead, sh, sw, r).sum(axis=-1)
    small *= np.float32(1 / (r * r))
    return resize(_box3(small), h, w)


def _sky_rows(scene: Scene, top, bottom) -> np.ndarray:
    """[3, H, 1] colour per row, from ``top`` at the image top to ``bottom`` at the horizon."""
    h = scene.label.shape[0]
    t = np.clip((np.arange(h, dtype=np.float32) + 0.5) / max(scene.horizon, 1.0), 0, 1)[:, None]
    return _vec(*top) * (1 - t) + _vec(*bottom) * t


def _set_sky(x: np.ndarray, scene: Scene, sky) -> np.ndarray:
    np.copyto(x, np.broadcast_to(sky, x.shape), where=scene.label == SKY)
    return x


def _haze(x: np.ndarray, scene: Scene, colour, distance: float, strength: float = 1.0) -> np.ndarray:
    """In place: blend towards ``colour`` by 1 - exp(-depth / distance) (Koschmieder's law)."""
    a = np.exp(scene.depth * np.float32(-1 / distance))
    a *= np.float32(-strength)
    a += np.float32(strength)
    return _mix(x, colour, a)


def _noise(scene: Scene, rng, soft: bool = False) -> np.ndarray:
    """A read-only [H, W] window of the shared noise fields (fine grain, or soft blobs) at a random offset."""
    h, w = scene.label.shape
    return noise_window(noise_bank(h, w)[int(soft)], h, w, rng.random(), rng.random())


def _jitter(rng, amount: float) -> np.ndarray:
    return _vec(*(1 + rng.uniform(-amount, amount, 3)))


def _day(base, scene, rng):
    x = _chw(base) * (_jitter(rng, 0.06) * np.float32(rng.uniform(0.85, 1.15)))
    c = np.float32(rng.uniform(0.9, 1.12))  # contrast about mid grey
    x *= c
    x += 0.5 - 0.5 * c
    return _hwc(x)


def _night(base, scene, rng):
    x = _chw(base) * (_vec(0.7, 0.85, 1.25) * _jitter(rng, 0.1) * np.float32(rng.uniform(0.15, 0.35)))
    _set_sky(
        x, scene, _sky_rows(scene, (0.01, 0.01, 0.03), (0.05, 0.06, 0.1)) * np.float32(rng.uniform(0.6, 1.4))
    )
    emit = _chw(scene.emission())
    np.maximum(x, emit * np.float32(rng.uniform(0.8, 1.0)), out=x)
    halo = _blur(emit, max(2, round(rng.uniform(4, 8) * min(scene.label.shape) / 256)))
    halo *= np.float32(rng.uniform(1.5, 3.0))
    x += halo
    x += _noise(scene, rng) * np.float32(rng.uniform(0.03, 0.08))  # sensor noise, brightness only
    return _hwc(x)


def _fog(base, scene, rng):
    x = _chw(base) * np.float32(rng.uniform(0.85, 1.0))
    grey = _vec(*(rng.uniform(0.68, 0.85) + rng.uniform(-0.02, 0.02, 3)))
    _haze(x, scene, grey, rng.uniform(18.0, 55.0))
    soft = _blur(x, 1)
    return _hwc(_mix(x, soft, np.float32(0.7)))


def _snow(base, scene, rng):
    label, (h, w) = scene.label, scene.label.shape
    white = _vec(0.93, 0.95, 0.98) * np.float32(rng.uniform(0.9, 1.05))
    x = _saturate(_chw(base), rng.uniform(0.5, 0.8))
    x *= _vec(0.95, 0.98, 1.05)
    patches = _noise(scene, rng, soft=True)
    cover = np.zeros((h, w), np.float32)
    cover[label == TERRAIN] = 0.95
    cover[label == SIDEWALK] = 0.85
    road = label == ROAD
    cover[road] = np.clip(rng.uniform(0.55, 0.85) + 0.12 * patches[road], 0, 1)  # slush, tyre-worn in places
    veg = label == VEGETATION
    cover[veg] = np.clip(patches[veg] * 0.6, 0, 0.9)
    # snow settles on the upper edge of every object: pixels just below a change of class
    top = np.zeros((h, w), bool)
    top[1:] = label[1:] != label[:-1]
    for k in range(1, max(2, h // 100)):
        top[k:] |= top[:-k].copy()
    top &= (label != SKY) & (label != ROAD) & (label != PERSON) & (label != 255)
    cover[top] = 0.95
    _mix(x, white, cover)
    _set_sky(
        x, scene, _sky_rows(scene, (0.62, 0.64, 0.68), (0.82, 0.83, 0.85)) * np.float32(rng.uniform(0.9, 1.1))
    )
    _haze(x, scene, np.float32(0.82), rng.uniform(60.0, 150.0))
    n = int(h * w * rng.uniform(0.004, 0.012))  # flakes, half of them two pixels tall
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    x[:, ys, xs] = x[:, ys, xs] * np.float32(0.2) + white[..., 0] * np.float32(0.8)
    ys, xs = np.minimum(ys[: n // 2] + 1, h - 1), xs[: n // 2]
    x[:, ys, xs] = x[:, ys, xs] * np.float32(0.4) + white[..., 0] * np.float32(0.6)
    return _hwc(x)


def _rain(base, scene, rng):
    h, w = scene.label.shape
    x = _saturate(_chw(base), rng.uniform(0.45, 0.7))
    x *= _vec(0.95, 0.98, 1.05) * np.float32(rng.uniform(0.55, 0.8))
    _set_sky(
        x, scene, _sky_rows(scene, (0.42, 0.44, 0.47), (0.58, 0.59, 0.6)) * np.float32(rng.uniform(0.85, 1.1))
    )
    # wet ground mirrors what stands above it: reflect rows about the horizon, smeared vertically
    rows = np.clip(2 * scene.horizon - np.arange(h) - 1, 0, h - 1).astype(np.intp)
    wet = np.isin(scene.label, (ROAD, SIDEWALK)).astype(np.float32)
    wet *= np.float32(rng.uniform(0.3, 0.55))
    _mix(x, _blur(x[:, rows], 2), wet)
    _haze(x, scene, np.float32(0.55), rng.uniform(80.0, 200.0))
    n, length = int(h * w * rng.uniform(0.002, 0.005)), max(3, int(h * rng.uniform(0.04, 0.09)))
    k = np.arange(length)
    ys = rng.integers(-length, h, n)[:, None] + k
    xs = rng.integers(0, w, n)[:, None] + np.rint(rng.uniform(-0.35, 0.35) * k).astype(np.intp)
    ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    ys, xs = ys[ok], xs[ok]
    x[:, ys, xs] = x[:, ys, xs] * np.float32(0.65) + np.float32(0.3)  # streaks
    return _hwc(x)


def _dusk(base, scene, rng):
    x = _chw(base) * (_vec(1.12, 0.8, 0.68) * np.float32(rng.uniform(0.45, 0.7)))
    _set_sky(
        x, scene, _sky_rows(scene, (0.25, 0.2, 0.45), (1.0, 0.55, 0.28)) * np.float32(rng.uniform(0.8, 1.1))
    )
    emit = _chw(scene.emission())
    x += emit * np.float32(0.3)
    halo = _blur(emit, max(2, round(4 * min(scene.label.shape) / 256)))
    halo *= np.float32(rng.uniform(0.5, 1.2))
    x += halo
    return _hwc(x)


def _sepia(base, scene, rng):
    h, w = scene.label.shape
    g = _gray(_chw(base))
    g -= 0.5
    g *= np.float32(rng.uniform(0.9, 1.3))
    g += 0.55
    vy, vx = np.linspace(-1, 1, h, dtype=np.float32)[:, None], np.linspace(-1, 1, w, dtype=np.float32)
    g *= 1 - np.float32(rng.uniform(0.15, 0.35) / 2) * (vy**2 + vx**2)  # vignette
    return _hwc(g * (_vec(1.07, 0.74, 0.43) * _jitter(rng, 0.05)))


def _neon(base, scene, rng):
    x = _chw(base)
    keys = np.array(
        (
            (0.04, 0.0, 0.1),
            *rng.permutation(((0.9, 0.1, 0.8), (0.1, 0.9, 1.0), (1.0, 0.95, 0.3), (0.3, 0.1, 0.9)))[:3],
        ),
        np.float32,
    )
    lut = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, 4), keys[:, c]) for c in range(3)])
    lum = _gray(x)
    lum *= np.float32(255 * rng.uniform(1.0, 1.4))
    np.clip(lum, 0, 255, out=lum)
    out = np.take(lut.astype(np.float32), lum.astype(np.intp), axis=1)  # luminance -> neon gradient map
    vivid = _hue_rotate(np.clip(_saturate(x, 2.2), 0, 1), rng.uniform(-np.pi, np.pi))
    _mix(out, vivid, np.float32(0.3))
    out += _blur(_chw(scene.emission()), max(2, round(3 * min(scene.label.shape) / 256))) * np.float32(0.8)
    return _hwc(out)


def _watercolor(base, scene, rng):
    label, (h, w) = scene.label, scene.label.shape
    soft = _blur(_chw(base), max(1, round(min(h, w) / 128)))
    levels = np.float32(rng.integers(5, 10))
    x = np.floor(soft * levels + 0.5) / levels
    _mix(x, soft, np.float32(0.4))
    wash = np.float32(rng.uniform(0.6, 0.8))  # thin washes of pigment on white paper
    x *= wash
    x += 1 - wash
    paper = _noise(scene, rng) * np.float32(0.08)
    paper += 1
    edges = np.zeros((h, w), bool)
    edges[1:] |= label[1:] != label[:-1]
    edges[:, 1:] |= label[:, 1:] != label[:, :-1]
    paper[edges] *= 0.75  # pigment pools along the outlines
    x *= paper
    return _hwc(x)


def _pastel(base, scene, rng):
    x = _hue_rotate(_saturate(_chw(base), rng.uniform(0.4, 0.7)), rng.uniform(-0.4, 0.4))
    x *= np.float32(rng.uniform(0.45, 0.6))
    x += _vec(*rng.uniform(0.85, 1.0, 3)) * np.float32(rng.uniform(0.4, 0.5))
    return _hwc(x)


def _monochrome(base, scene, rng):
    g = np.clip(_gray(_chw(base)), 0, 1) ** np.float32(rng.uniform(0.7, 1.4))
    g -= 0.5
    g *= np.float32(rng.uniform(0.9, 1.4))
    g += 0.5
    return _hwc(g * _jitter(rng, 0.05))


def _desert(base, scene, rng):
    label = scene.label
    src = _chw(base)
    sand = _vec(0.86, 0.72, 0.5) * np.float32(rng.uniform(0.9, 1.05))
    x = src * (_vec(1.15, 1.0, 0.72) * np.float32(rng.uniform(1.0, 1.15)))
    dry = np.where(
        label == TERRAIN, np.float32(0.75), np.where(label == VEGETATION, np.float32(0.35), np.float32(0))
    )
    _mix(x, sand * (0.8 + 0.4 * _gray(src)), dry)  # grass and leaves burnt to sand and olive
    _set_sky(x, scene, _sky_rows(scene, (0.72, 0.72, 0.66), (0.95, 0.86, 0.68)))
    _haze(x, scene, sand, rng.uniform(70.0, 200.0))
    return _hwc(x)


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
