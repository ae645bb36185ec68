"""Drawing primitives of the synthetic street world: class ids, palettes, the canvas and the noise fields.

``Scene`` is what a built scene hands to the styles; ``_Canvas`` is the painter's raster the scene is drawn
on; ``noise_bank`` / ``noise_window`` and ``resize`` are the shared noise fields and bilinear resize that
both the scene shading (``street``) and the styles (``styles``) read.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from famix.data.trainids import TRAIN_ID

ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE = (
    TRAIN_ID[n] for n in ("road", "sidewalk", "building", "wall", "fence", "pole")
)
LIGHT, SIGN, VEGETATION, TERRAIN, SKY = (
    TRAIN_ID[n] for n in ("traffic light", "traffic sign", "vegetation", "terrain", "sky")
)
PERSON, CAR = TRAIN_ID["person"], TRAIN_ID["car"]
SKY_DEPTH = 1000.0


def _hex(colours: str) -> tuple[tuple[float, float, float], ...]:
    """'rrggbb rrggbb ...' -> a palette of float RGB triples."""
    return tuple(tuple(int(c[i : i + 2], 16) / 255 for i in (0, 2, 4)) for c in colours.split())


_FACADES = _hex("c2b299 9e5c47 8f8f8c dbd6c7 bd9e70 858f9e a88575")
_CARS = _hex("e6e6e6 141417 9ea1a6 575961 b81a1a 1f388c 295238 d9b833 8c7361")
_SIDEWALKS = _hex("9e9e99 ada18f 99756e 8c8f94")
_TERRAINS = _hex("668538 8f8a57 806b4f 577533")
_SKINS = _hex("e0b899 a87a5c 6b4a36")
_SIGNS = _hex("1a4cb8 cc1a1a ebc71a ebebeb")
_LAMPS = _hex("ff1f14 ffa60d 1aff73")
_WALLS = _hex("9e998f 946b57 b2ad9e")
_FENCES = _hex("737378 805c3d 334c38")
_METALS = _hex("808080 333d33 9e9e99")
# facade segment kinds (building, tree mass, wall, fence): palette, brightness jitter, texture strength
_SEGMENT_LOOKS = (
    (_FACADES, 0.12, 0.05),
    (_hex("385c26"), 0.2, 0.2),
    (_WALLS[:2], 0.1, 0.06),
    (_FENCES[:2], 0.1, 0.06),
)


@dataclass
class Scene:
    """One layout. ``label`` is domain independent; styles read depth, light and the emission colours."""

    label: np.ndarray  # uint8 [H, W] trainIds, 255 = ignore
    depth: np.ndarray  # float32 [H, W] metres along the view axis, SKY_DEPTH for sky
    light: np.ndarray  # float32 [H, W] emission strength in [0, 1] (windows, lamps, car lights)
    base: np.ndarray  # float32 [H, W, 3] plain daylight colours in [0, 1] (a view of channel-first memory)
    cid: np.ndarray  # intp [H, W] colour-entry index of each pixel
    glow_table: np.ndarray  # float32 [3, N] emitted colour * strength per colour entry
    horizon: float  # image row of the horizon
    vanish_x: float  # image column of the vanishing point

    def emission(self) -> np.ndarray:
        """[H, W, 3] colour of the light each pixel emits (zero for non-emitters), channel-first memory."""
        return np.take(self.glow_table, self.cid, axis=1).transpose(1, 2, 0)


class _Canvas:
    """Painter's-algorithm raster: label, colour entry and depth painted together (label None: colour)."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.label = np.full((h, w), SKY, np.uint8)
        self.cid = np.zeros((h, w), np.intp)  # entry 0 is the sky; its colour is computed per row later
        self.depth = np.full((h, w), SKY_DEPTH, np.float32)
        self.rgb, self.tex, self.glow = [(0.0, 0.0, 0.0)], [0.0], [(0.0, 0.0, 0.0)]

    def entry(self, rgb, tex: float = 0.06, emit: float = 0.0, glow=None) -> int:
        self.rgb.append(rgb)
        self.tex.append(tex)
        self.glow.append(tuple(emit * c for c in (glow or rgb)) if emit else (0.0, 0.0, 0.0))
        return len(self.rgb) - 1

    def _box(self, x0, x1, y0, y1):
        # Round to pixel centres but keep at least one pixel so thin far objects do not vanish.
        xa, ya = math.floor(x0 + 0.5), math.floor(y0 + 0.5)
        xb, yb = max(math.floor(x1 + 0.5), xa + 1), max(math.floor(y1 + 0.5), ya + 1)
        return max(xa, 0), min(xb, self.w), max(ya, 0), min(yb, self.h)

    def ellipse(self, cx, cy, rx, ry, label, cid, z):
        xa, xb, ya, yb = self._box(cx - rx, cx + rx, cy - ry, cy + ry)
        if xa >= xb or ya >= yb:
            return
        yy = (np.arange(ya, yb) + 0.5 - cy) / max(ry, 0.5)
        xx = (np.arange(xa, xb) + 0.5 - cx) / max(rx, 0.5)
        m = yy[:, None] ** 2 + xx[None, :] ** 2 <= 1.0
        if label is not None:
            self.label[ya:yb, xa:xb][m] = label
            self.depth[ya:yb, xa:xb][m] = z
        self.cid[ya:yb, xa:xb][m] = cid


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """[h, w] float32 value noise with unit-ish variance and features about ``cell`` pixels wide."""
    sh, sw = int(h / cell) + 2, int(w / cell) + 2
    return resize(rng.standard_normal((sh, sw), dtype=np.float32), h, w)


def resize(small: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of the last two axes of ``small`` to (h, w), corners aligned to pixel edges."""
    sh, sw = small.shape[-2:]
    y = (np.arange(h, dtype=np.float32) + 0.5) * np.float32((sh - 1) / h)
    x = (np.arange(w, dtype=np.float32) + 0.5) * np.float32((sw - 1) / w)
    y0, x0 = y.astype(np.intp), x.astype(np.intp)
    fy, fx = (y - y0)[:, None], x - x0
    # interpolate along the short axis first; in-place updates keep few full-size temporaries alive
    rows = small[..., x0] * (1 - fx)
    rows += small[..., np.minimum(x0 + 1, sw - 1)] * fx
    out = np.take(rows, y0, axis=-2)  # take() is much faster than rows[..., y0, :] for stacked planes
    out *= 1 - fy
    nxt = np.take(rows, np.minimum(y0 + 1, sh - 1), axis=-2)
    nxt *= fy
    out += nxt
    return out


@functools.lru_cache(maxsize=4)
def noise_bank(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Two fixed [2h, 2w] float32 noise fields (fine grain + blotches, and soft cloud-sized blobs).

    Scenes and styles read windows of them at random offsets: cutting a view costs nothing, whereas drawing
    and interpolating fresh noise per image was a large share of the render time. Read-only.
    """
    rng = np.random.default_rng(0x5EED)
    fine = rng.random((2 * h, 2 * w), dtype=np.float32) - 0.5
    fine += smooth_noise(rng, 2 * h, 2 * w, 6.0) * 0.4
    soft = smooth_noise(rng, 2 * h, 2 * w, 24.0) + smooth_noise(rng, 2 * h, 2 * w, 9.0) * 0.4
    fine.flags.writeable = soft.flags.writeable = False
    return fine, soft


def noise_window(bank: np.ndarray, h: int, w: int, r0: float, r1: float) -> np.ndarray:
    """A read-only [h, w] view of a ``noise_bank`` field at an offset chosen by two uniforms in [0, 1)."""
    y, x = int(r0 * (bank.shape[0] - h + 1)), int(r1 * (bank.shape[1] - w + 1))
    return bank[y : y + h, x : x + w]


def _pick(r: float, probs) -> int:
    """Index drawn from ``probs`` with the uniform number ``r`` (cheaper than Generator.choice)."""
    for i, p in enumerate(probs):
        r -= p
        if r < 0:
            return i
    return len(probs) - 1
