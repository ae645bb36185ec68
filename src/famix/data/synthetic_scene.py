"""Procedural street-scene layout for the synthetic world (styles and datasets live in ``synthetic``).

A scene is a pinhole view down a straight street: a ground plane (road with lane dashes, kerbs, paved
sidewalks, terrain strips), two facade planes cut into segments (buildings with window grids, tree
masses, walls, fences), a distant skyline closing the street, and depth-sorted objects (cars, people,
trees, poles carrying signs, traffic lights or lamps). Every pixel gets a trainId, a depth in metres,
an emission strength (lit windows, lamps, car lights) and a plain "day" colour that styles restyle.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from famix.data.labels import IGNORE_INDEX, TRAIN_ID

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


class _Builder:
    """Draws one scene; geometry in metres (X right, Y up from the ground, Z forward), focal in pixels."""

    def __init__(self, rng: np.random.Generator, h: int, w: int):
        self.rng, self.h, self.w = rng, h, w
        self.cv = _Canvas(h, w)
        u = rng.uniform
        self.yh, self.xv = h * u(0.45, 0.58), w * u(0.36, 0.64)
        self.focal, self.cam, self.zfar = w * u(0.7, 0.95), u(2.0, 3.0), u(60.0, 140.0)
        half, centre = u(2.5, 4.0), u(-0.3, 0.3)
        self.road = (centre - half, centre + half)
        side = u(2.4, 4.4, 2)
        strip = np.where(rng.random(2) < 0.3, 0.0, u(1.0, 4.5, 2))
        self.walk = (self.road[0] - side[0], self.road[1] + side[1])  # outer sidewalk edges
        self.front = (self.walk[0] - strip[0], self.walk[1] + strip[1])  # facade planes
        self.lanes = int(rng.integers(2, 5))
        self.yy = (np.arange(h, dtype=np.float32) + 0.5)[:, None]  # pixel-centre rows, a column vector
        self.xc = np.arange(w, dtype=np.float32) + 0.5
        self._pool: list[float] = []
        self._car_parts: list[int] = []

    def r(self) -> float:
        """Next uniform number from a pre-drawn pool (one Generator call per 1024 scalars is far cheaper)."""
        if not self._pool:
            self._pool = self.rng.random(1024).tolist()[::-1]
        return self._pool.pop()

    def u(self, lo, hi) -> float:
        return lo + (hi - lo) * self.r()

    def i(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi) from the pool."""
        return lo + int((hi - lo) * self.r())

    def col(self, palette, jitter=0.08, tex=0.06, emit=0.0, glow=None) -> int:
        """A new colour entry: a palette pick with brightness and hue jitter."""
        if len(self._pool) < 5:
            self._pool[:0] = self.rng.random(1024).tolist()  # consumed from the end, like r()
        r0, r1, r2, r3, r4 = self._pool[-5:]
        del self._pool[-5:]
        base = palette[int(r0 * len(palette))] if isinstance(palette[0], tuple) else palette
        s = 1 + jitter * (2 * r1 - 1)
        rgb = tuple(
            min(max(c * s + 0.06 * (r - 0.5), 0.0), 1.0) for c, r in zip(base, (r2, r3, r4), strict=True)
        )
        return self.cv.entry(rgb, tex, emit, glow)

    # world box / ellipse at depth z; inlined projection and rounding, as objects make ~150 calls a scene
    def box(self, x0, x1, y0, y1, z, label, cid):
        p, cv = self.focal / z, self.cv
        xa, ya = math.floor(self.xv + p * x0 + 0.5), math.floor(self.yh + p * (self.cam - y1) + 0.5)
        # keep at least one pixel so thin far objects (poles) do not vanish
        xb = max(math.floor(self.xv + p * x1 + 0.5), xa + 1, 0)
        yb = max(math.floor(self.yh + p * (self.cam - y0) + 0.5), ya + 1, 0)
        xa, ya = max(xa, 0), max(ya, 0)
        if xa < cv.w and ya < cv.h:
            if label is not None:
                cv.label[ya:yb, xa:xb] = label
                cv.depth[ya:yb, xa:xb] = z
            cv.cid[ya:yb, xa:xb] = cid

    def oval(self, x, y, rx, ry, z, label, cid):
        p = self.focal / z
        self.cv.ellipse(self.xv + p * x, self.yh + p * (self.cam - y), p * rx, p * ry, label, cid, z)

    def _paint(self, m, label, cid, depth):
        cv = self.cv
        np.copyto(cv.label, label, where=m)
        np.copyto(cv.cid, cid, where=m)
        np.copyto(cv.depth, depth, where=m)

    def skyline(self):
        """Far blocks closing the street, painted first so everything nearer covers them."""
        rng, p = self.rng, self.focal / self.zfar
        block = np.floor((self.xc - self.xv) / p / rng.uniform(8, 20) + rng.random()).astype(np.intp) % 64
        heights = rng.uniform(5.0, 30.0, 64)
        trees = rng.random(64) < 0.3
        heights[trees] = rng.uniform(5.0, 12.0, int(trees.sum()))
        cids = np.array([self.col(_FACADES, 0.15) for _ in range(4)] + [self.col((0.26, 0.36, 0.2), tex=0.2)])
        top = self.yh - p * (heights[block] - self.cam)
        m = (self.yy >= top) & (self.yy < self.yh + p * self.cam)
        self._paint(
            m,
            np.where(trees, VEGETATION, BUILDING).astype(np.uint8)[block],
            np.where(trees, cids[4], cids[np.arange(64) % 4])[block],
            np.float32(self.zfar),
        )

    def ground(self):
        rng, cv = self.rng, self.cv
        d = self.yy[:, 0] - self.yh
        r0 = int(np.searchsorted(d, self.focal * self.cam / self.zfar))  # first row nearer than the skyline
        d = d[r0:]
        z = self.focal * self.cam / d
        xw = (self.xc - self.xv)[None, :] * (self.cam / d)[:, None]  # lateral metres on the ground
        edges = np.array(
            [self.front[0], self.walk[0], self.road[0], self.road[1], self.walk[1], self.front[1]], np.float32
        )
        bins = np.searchsorted(edges, xw)
        t_l, t_r, walk = self.col(_TERRAINS, tex=0.14), self.col(_TERRAINS, tex=0.14), self.col(_SIDEWALKS)
        road = self.col((0.38, 0.38, 0.39), 0.15, tex=0.05)
        labels = np.array([TERRAIN, TERRAIN, SIDEWALK, ROAD, SIDEWALK, TERRAIN, TERRAIN], np.uint8)
        cid = np.take(np.array([t_l, t_l, walk, road, walk, t_r, t_r]), bins)
        # kerb stones and paving joints, so sidewalks read as sidewalks
        kerb = ((bins == 2) & (xw > self.road[0] - 0.25)) | ((bins == 4) & (xw < self.road[1] + 0.25))
        cid[kerb] = self.col((0.72, 0.72, 0.70), 0.05)
        joints = ((z % self.u(1.0, 2.0)) < 0.1)[:, None] & ((bins == 2) | (bins == 4)) & ~kerb
        cid[joints] = self.col([c * 0.82 for c in self.cv.rgb[walk]], 0.02)
        # dashed lane separators and, on some roads, solid edge lines
        lane_w = (self.road[1] - self.road[0]) / self.lanes
        t = (xw - self.road[0]) / lane_w
        k = np.rint(t)
        dash = ((z + self.u(0, 10)) % self.u(7.0, 12.0)) < self.u(2.5, 4.0)
        mark = (np.abs(t - k) * lane_w < 0.08) & (k >= 1) & (k <= self.lanes - 1) & dash[:, None]
        if rng.random() < 0.6:
            mark |= (bins == 3) & (np.abs(np.minimum(xw - self.road[0], self.road[1] - xw) - 0.35) < 0.08)
        cid[mark] = self.col((0.88, 0.88, 0.84), 0.05, tex=0.03)
        cv.label[r0:] = np.take(labels, bins)
        cv.cid[r0:] = cid
        cv.depth[r0:] = z[:, None]

    def facades(self):
        rng, u = self.rng, self.u
        left = self.xc < self.xv
        zc = (
            self.focal
            * np.where(left, -self.front[0], self.front[1])
            / np.maximum(np.abs(self.xc - self.xv), 1e-3)
        )
        # segments along each facade; kinds: building, tree mass, wall, fence
        seg_kind, seg_h, seg_cid = [], [], []
        seg_id = np.zeros(self.w, np.intp)
        for side in (True, False):
            ends = [u(7.0, 30.0)]
            while ends[-1] < self.zfar:  # segments up to the skyline, none wasted beyond it
                ends.append(ends[-1] + u(7.0, 30.0))
            seg_id = np.where(left == side, np.searchsorted(ends, zc) + len(seg_kind), seg_id)
            for _ in ends:
                k = _pick(self.r(), (0.7, 0.2, 0.05, 0.05))
                seg_kind.append(k)
                seg_h.append(u(8.0, 26.0) if k == 0 else u(4.0, 11.0) if k == 1 else u(1.0, 2.4))
                palette, jitter, tex = _SEGMENT_LOOKS[k]
                seg_cid.append(self.col(palette, jitter, tex=tex))
            seg_kind.append(0)  # sentinel past the last end, drawn as nothing
            seg_h.append(-1e3)
            seg_cid.append(0)
        kind = np.asarray(seg_kind)[seg_id]
        hgt = np.asarray(seg_h, np.float32)[seg_id]
        bumps = u(0.6, 1.8) * (np.sin(zc * u(0.3, 0.8) + u(0, 6)) + 0.6 * np.sin(zc * u(1.0, 2.0) + u(0, 6)))
        hgt = np.where(kind == 1, hgt + bumps, hgt)
        p = self.focal / zc
        top, bottom = self.yh - p * (hgt - self.cam), self.yh + p * self.cam
        bottom[zc >= self.zfar] = -1.0  # beyond the skyline: nothing
        m = self.yy >= top
        m &= self.yy < bottom
        cols = np.flatnonzero((kind == 3) & ((zc / 0.35) % 1.0 > 0.5))  # gaps between fence boards
        if cols.size:
            yw = self.cam - (self.yy - self.yh) / p[cols]
            m[:, cols] &= np.abs(yw - hgt[cols] * 0.5) >= hgt[cols] * 0.35
        self._paint(
            m,
            np.array([BUILDING, VEGETATION, WALL, FENCE], np.uint8)[kind],
            np.asarray(seg_cid)[seg_id],
            zc.astype(np.float32),
        )
        # window grid (in floor units), only where a window spans a few pixels so it does not alias into noise
        spacing, floor_h = u(2.4, 3.6), u(2.9, 3.6)
        fz = (zc / spacing) % 1.0
        cols = np.flatnonzero((fz > 0.33) & (fz < 0.72) & (p * spacing > 4) & (p * floor_h > 5) & (kind == 0))
        if cols.size:
            fy = (self.cam - (self.yy - self.yh) / p[cols]) / floor_h
            fi = np.floor(fy)
            ff = fy - fi
            win = m[:, cols] & (ff > 0.35) & (ff < 0.75) & (fy > 0.3) & (fy < (hgt[cols] - 0.8) / floor_h)
            cell = fi.astype(np.intp) * 131 + (
                np.floor(zc[cols] / spacing).astype(np.intp) * 7 + seg_id[cols] * 29
            )
            lit = np.take(rng.random(997) < u(0.2, 0.6), cell, mode="wrap")
            dark = self.col((0.2, 0.24, 0.3), 0.15, tex=0.1)
            bright = self.col((0.26, 0.3, 0.36), 0.15, tex=0.1, emit=1.0, glow=(1.0, 0.82, 0.5))
            self.cv.cid[:, cols] = np.where(win, np.where(lit, bright, dark), self.cv.cid[:, cols])

    def barrier(self, left: bool):
        """A wall or fence run along the outer sidewalk edge (in front of the garden strip or facade)."""
        x = self.walk[0] if left else self.walk[1]
        z0 = self.u(5.0, 30.0)
        z1, height, is_fence = z0 + self.u(8.0, 40.0), self.u(0.9, 2.0), self.r() < 0.5
        cid = self.col(_FENCES, 0.1) if is_fence else self.col(_WALLS, 0.08)
        side = (self.xc < self.xv) if left else (self.xc >= self.xv)
        zc = self.focal * abs(x) / np.maximum(np.abs(self.xc - self.xv), 1e-3)
        cols = np.flatnonzero(side & (zc >= z0) & (zc < z1))
        if not cols.size:
            return
        # work on the bounding block only: its columns are contiguous, its rows span top to base
        zc = zc[cols[0] : cols[-1] + 1]
        p = self.focal / zc
        top, bottom = self.yh - p * (height - self.cam), self.yh + p * self.cam
        r0, r1 = max(int(top.min()), 0), min(int(bottom.max()) + 1, self.h)
        yy = self.yy[r0:r1]
        m = (yy >= top) & (yy < bottom)
        if is_fence:  # rails top and bottom, posts in between
            yw = self.cam - (yy - self.yh) / p
            m &= ((zc / 0.3) % 1.0 < 0.35) | (yw > height - 0.12) | (yw < 0.12)
        block = (slice(r0, r1), slice(cols[0], cols[-1] + 1))
        np.copyto(self.cv.label[block], FENCE if is_fence else WALL, where=m)
        np.copyto(self.cv.cid[block], cid, where=m)
        np.copyto(self.cv.depth[block], zc.astype(np.float32), where=m)

    def car(self, x, z):
        u, b = self.u, self.box
        w, hb, ht = u(1.65, 2.0), u(0.85, 1.1), u(1.35, 1.75)
        body = self.col(_CARS)
        if self.focal * w / z < 5:  # a few pixels wide: details would not show
            b(x - w / 2, x + w / 2, 0, ht * 0.9, z, CAR, body)
            return
        if not self._car_parts:  # glass, tyres, shadow, plate, head and tail lamps: shared by all cars
            self._car_parts = [self.col(c, 0.05) for c in _hex("212935 0d0d0d 1f1f1f e6e6db")]
            self._car_parts += [
                self.col((0.92, 0.92, 0.85), 0.03, emit=1.0),
                self.col((0.75, 0.1, 0.08), 0.05, emit=0.7, glow=(1.0, 0.1, 0.05)),
            ]
        glass, tyre, shadow, plate, head, tail = self._car_parts
        lamp = head if x < (self.road[0] + self.road[1]) / 2 and self.r() < 0.7 else tail  # oncoming lanes
        x0, x1 = x - w / 2, x + w / 2
        b(x0 + 0.05, x0 + 0.38, 0, 0.45, z, CAR, tyre)
        b(x1 - 0.38, x1 - 0.05, 0, 0.45, z, CAR, tyre)
        b(x0 + 0.38, x1 - 0.38, 0, 0.3, z, None, shadow)  # shadow on the road stays road
        b(x0, x1, 0.28, hb, z, CAR, body)
        b(x0 + 0.12 * w, x1 - 0.12 * w, hb, ht, z, CAR, body)
        b(x0 + 0.17 * w, x1 - 0.17 * w, hb + 0.06, ht - 0.07, z, CAR, glass)
        b(x0 + 0.04, x0 + 0.34, hb - 0.24, hb - 0.08, z, CAR, lamp)
        b(x1 - 0.34, x1 - 0.04, hb - 0.24, hb - 0.08, z, CAR, lamp)
        b(x - 0.25, x + 0.25, 0.42, 0.58, z, CAR, plate)

    def person(self, x, z):
        u, b = self.u, self.box
        s, stride = u(1.55, 1.95), u(0.0, 0.12)
        shirt = self.col((u(0.1, 0.85), u(0.1, 0.85), u(0.1, 0.85)), 0.1)
        pants, skin = self.col((0.15, 0.17, 0.25), 0.4), self.col(_SKINS)
        if self.focal * s / z < 8:
            b(x - 0.22, x + 0.22, 0, s, z, PERSON, shirt)
            return
        b(x - 0.14 - stride, x - 0.02, 0, 0.48 * s, z, PERSON, pants)
        b(x + 0.02, x + 0.14 + stride, 0, 0.48 * s, z, PERSON, pants)
        b(x - 0.22, x + 0.22, 0.46 * s, 0.83 * s, z, PERSON, shirt)
        b(x - 0.29, x - 0.21, 0.5 * s, 0.8 * s, z, PERSON, shirt)
        b(x + 0.21, x + 0.29, 0.5 * s, 0.8 * s, z, PERSON, shirt)
        self.oval(x, 0.915 * s, 0.1, 0.125, z, PERSON, skin)

    def tree(self, x, z):
        u = self.u
        trunk, crown = u(1.8, 3.2), self.col((0.2, 0.36, 0.14), 0.25, tex=0.22)
        self.box(x - 0.16, x + 0.16, 0, trunk + 0.5, z, VEGETATION, self.col((0.3, 0.22, 0.15)))
        rx, ry = u(1.5, 3.0), u(1.6, 3.2)
        self.oval(x, trunk + ry * 0.8, rx, ry, z, VEGETATION, crown)
        self.oval(x + u(-0.6, 0.6) * rx, trunk + ry * u(1.0, 1.5), rx * 0.65, ry * 0.6, z, VEGETATION, crown)

    def pole(self, x, z):
        u, b = self.u, self.box
        towards = 1.0 if x < (self.road[0] + self.road[1]) / 2 else -1.0  # arms reach over the road
        metal = self.col(_METALS, 0.08)
        pw = u(0.12, 0.2) / 2
        kind = _pick(self.r(), (0.4, 0.38, 0.22))  # sign, traffic light, street lamp
        ph = u(2.6, 3.8) if kind == 0 else u(3.5, 5.5) if kind == 1 else u(6.0, 9.0)
        b(x - pw, x + pw, 0, ph, z, POLE, metal)
        if kind == 0:
            for k in range(1 + int(self.r() < 0.35)):
                sz, top = u(0.7, 1.1), ph - k * 1.15
                plate, inner = self.col(_SIGNS, 0.06), self.col(_SIGNS, 0.06)
                if self.r() < 0.5:
                    self.oval(x, top - sz / 2, sz / 2, sz / 2, z, SIGN, plate)
                else:
                    b(x - sz / 2, x + sz / 2, top - sz, top, z, SIGN, plate)
                b(x - sz / 5, x + sz / 5, top - sz * 0.6, top - sz * 0.4, z, SIGN, inner)
            return
        reach = u(2.0, 4.5) if kind == 1 and self.r() < 0.5 else u(0.8, 1.8) if kind == 2 else 0.0
        ax = x + towards * reach
        if reach:
            b(min(x, ax), max(x, ax), ph - 0.14, ph, z, POLE, metal)
        if kind == 2:
            head = self.col((0.85, 0.85, 0.8), 0.03, emit=1.0, glow=(1.0, 0.85, 0.55))
            b(ax - 0.3, ax + 0.3, ph - 0.25, ph - 0.05, z, POLE, head)
            return
        top = ph - 0.12 if reach else ph
        b(ax - 0.22, ax + 0.22, top - 1.1, top, z, LIGHT, self.col(((0.1, 0.1, 0.1), (0.55, 0.5, 0.12)), 0.1))
        on = self.i(0, 3)
        for k in range(3):
            lamp = self.col(_LAMPS[k], 0.05, emit=1.0) if k == on else self.col((0.22, 0.22, 0.2), 0.1)
            self.oval(ax, top - 0.22 - 0.33 * k, 0.12, 0.12, z, LIGHT, lamp)

    def clutter(self, x, z):
        w, h = self.u(0.4, 0.8), self.u(0.6, 1.1)
        self.box(x - w / 2, x + w / 2, 0, h, z, IGNORE_INDEX, self.col(_hex("334d38 80734d")))

    def objects(self):
        """Cars, people, trees, poles and clutter, painted far to near."""
        u = self.u
        znear = self.focal * self.cam / (self.h - self.yh)  # depth seen at the bottom row
        zmax = min(self.zfar * 0.8, 70.0)

        def depth(lo):  # log-uniform, so near (large) and far (small) objects both occur
            lo = max(lo, znear * 1.2)
            return math.exp(u(math.log(lo), math.log(max(zmax, lo * 1.5))))

        def sidewalk_x(left, inner, outer):  # inner/outer: fractions across the sidewalk from the kerb
            a, b = (self.road[0], self.walk[0]) if left else (self.road[1], self.walk[1])
            return a + (b - a) * u(inner, outer)

        def visible_from(x):  # nearest depth at which lateral position x is inside the image
            return self.focal * abs(x) / (self.xv if x < 0 else self.w - self.xv) * 0.8

        behind, items = [], []
        lane_w = (self.road[1] - self.road[0]) / self.lanes
        for _ in range(self.i(3, 10)):
            if self.r() < 0.3:  # parked at the kerb
                x = self.road[0] + 1.1 if self.r() < 0.5 else self.road[1] - 1.1
            else:
                x = self.road[0] + lane_w * (self.i(0, self.lanes) + 0.5) + u(-0.3, 0.3)
            items.append((depth(visible_from(x) + 2), self.car, x))
        for _ in range(self.i(3, 10)):
            x = sidewalk_x(self.r() < 0.5, 0.2, 0.9)
            items.append((depth(visible_from(x)), self.person, x))
        for _ in range(self.i(2, 9)):
            left = self.r() < 0.5
            if self.r() < 0.6:
                x = sidewalk_x(left, 0.8, 0.92)
                items.append((depth(visible_from(x)), self.tree, x))
            else:  # in the garden strip: behind any barrier along the sidewalk
                x = (self.front[0] + self.walk[0]) / 2 if left else (self.front[1] + self.walk[1]) / 2
                behind.append((depth(visible_from(x)), self.tree, x))
        for _ in range(self.i(3, 8)):
            x = sidewalk_x(self.r() < 0.5, 0.06, 0.15)
            items.append((depth(visible_from(x)), self.pole, x))
        for _ in range(self.i(0, 3)):  # unlabeled clutter (bins, boxes) -> ignore pixels
            x = sidewalk_x(self.r() < 0.5, 0.4, 0.9)
            items.append((depth(visible_from(x)), self.clutter, x))
        for z, draw, x in sorted(behind, key=lambda it: -it[0]):
            draw(x, z)
        for left in (True, False):
            if self.r() < 0.6:
                self.barrier(left)
        for z, draw, x in sorted(items, key=lambda it: -it[0]):
            draw(x, z)

    def hood(self):
        """The ego vehicle's bonnet along the bottom edge, unlabeled as in Cityscapes."""
        xs = self.xc / self.w * 2 - 1
        top = self.h - self.h * self.u(0.03, 0.08) * (1 - 0.6 * xs**2)
        self._paint(self.yy >= top, IGNORE_INDEX, self.col((0.1, 0.1, 0.12)), np.float32(1.0))

    def shade(self) -> Scene:
        """Base daylight colours: per-entry colour, texture noise, aerial haze, sky gradient and clouds."""
        # Written with in-place updates: fresh full-size temporaries cost page faults that dominate runtime.
        cv, h, w = self.cv, self.h, self.w
        rgb = np.take(np.asarray(cv.rgb, np.float32).T, cv.cid, axis=1)  # channel-first [3, H, W]
        fine, soft = noise_bank(h, w)
        tex = np.take(np.asarray(cv.tex, np.float32), cv.cid)
        tex *= noise_window(fine, h, w, self.r(), self.r())
        tex += 1
        rgb *= tex
        fade = np.multiply(cv.depth, np.float32(-1 / (self.zfar * 1.5)), out=tex)
        np.exp(fade, out=fade)
        fade *= -0.55
        fade += 0.55
        haze = np.array((0.78, 0.82, 0.88), np.float32)[:, None, None]
        tmp = np.subtract(haze, rgb)
        tmp *= fade
        rgb += tmp
        t = np.clip(self.yy / max(self.yh, 1.0), 0, 1) ** 1.5
        zenith = np.array((0.28, 0.48, 0.82), np.float32)[:, None, None] * np.float32(self.u(0.85, 1.15))
        sky = zenith * (1 - t) + haze * t  # [3, H, 1]
        cover = self.u(-0.5, 0.6)  # from clear to half-clouded skies
        clouds = np.add(noise_window(soft, h, w, self.r(), self.r()), np.float32(cover), out=fade)
        np.clip(clouds, 0, 1, out=clouds)
        clouds *= clouds  # soft edges, thin haze where the noise barely crosses the threshold
        clouds *= 0.85
        np.multiply(0.95 - sky, clouds, out=tmp)
        tmp += sky
        np.copyto(rgb, tmp, where=cv.label == SKY)
        np.clip(rgb, 0, 1, out=rgb)
        glow = np.asarray(cv.glow, np.float32).T.copy()
        return Scene(
            label=cv.label,
            depth=cv.depth,
            light=np.take(glow.max(axis=0), cv.cid),
            base=rgb.transpose(1, 2, 0),
            cid=cv.cid,
            glow_table=glow,
            horizon=self.yh,
            vanish_x=self.xv,
        )


def build_scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    """Lay out and colour one street scene of ``size = (H, W)`` pixels, drawing only from ``rng``."""
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive (H, W), got {size}")
    b = _Builder(rng, h, w)
    b.skyline()
    b.ground()
    b.facades()
    b.objects()
    if b.r() < 0.5:
        b.hood()
    return b.shade()
