"""Procedural street-scene layout for the synthetic world (styles and datasets live in ``synthetic``).

A scene is a pinhole view down a straight street: a ground plane (road with lane dashes, kerbs, paved
sidewalks, terrain strips), two facade planes cut into segments (buildings with window grids, tree
masses, walls, fences), a distant skyline closing the street, and depth-sorted objects (cars, people,
trees, poles carrying signs, traffic lights or lamps). Every pixel gets a trainId, a depth in metres,
an emission strength (lit windows, lamps, car lights) and a plain "day" colour that styles restyle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from famix.data.labels import IGNORE_INDEX, TRAIN_ID

ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE = (TRAIN_ID[n] for n in ("road", "sidewalk", "building", "wall",
                                                                    "fence", "pole"))
LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR = (TRAIN_ID[n] for n in (
    "traffic light", "traffic sign", "vegetation", "terrain", "sky", "person", "car"))
SKY_DEPTH = 1000.0

_FACADES = ((0.76, 0.70, 0.60), (0.62, 0.36, 0.28), (0.56, 0.56, 0.55), (0.86, 0.84, 0.78),
            (0.74, 0.62, 0.44), (0.52, 0.56, 0.62), (0.66, 0.52, 0.46))
_CARS = ((0.90, 0.90, 0.90), (0.08, 0.08, 0.09), (0.62, 0.63, 0.65), (0.34, 0.35, 0.38), (0.72, 0.10, 0.10),
         (0.12, 0.22, 0.55), (0.16, 0.32, 0.22), (0.85, 0.72, 0.20), (0.55, 0.45, 0.38))
_SIDEWALKS = ((0.62, 0.62, 0.60), (0.68, 0.63, 0.56), (0.60, 0.46, 0.43), (0.55, 0.56, 0.58))
_TERRAINS = ((0.40, 0.52, 0.22), (0.56, 0.54, 0.34), (0.50, 0.42, 0.31), (0.34, 0.46, 0.20))
_SKINS = ((0.88, 0.72, 0.60), (0.66, 0.48, 0.36), (0.42, 0.29, 0.21))
_SIGNS = ((0.10, 0.30, 0.72), (0.80, 0.10, 0.10), (0.92, 0.78, 0.10), (0.92, 0.92, 0.92))
_LAMPS = ((1.0, 0.12, 0.08), (1.0, 0.65, 0.05), (0.10, 1.0, 0.45))


@dataclass
class Scene:
    """One layout. ``label`` is domain independent; styles read depth, light and the emission colours."""

    label: np.ndarray  # uint8 [H, W] trainIds, 255 = ignore
    depth: np.ndarray  # float32 [H, W] metres along the view axis, SKY_DEPTH for sky
    light: np.ndarray  # float32 [H, W] emission strength in [0, 1] (windows, lamps, car lights)
    base: np.ndarray  # float32 [H, W, 3] plain daylight colours in [0, 1]
    cid: np.ndarray  # int32 [H, W] colour-entry index of each pixel
    glow_table: np.ndarray  # float32 [N, 3] emitted colour * strength per colour entry
    horizon: float  # image row of the horizon
    vanish_x: float  # image column of the vanishing point

    def emission(self) -> np.ndarray:
        """[H, W, 3] colour of the light each pixel emits (zero for non-emitters)."""
        return self.glow_table[self.cid]


class _Canvas:
    """Painter's-algorithm raster: label, colour entry and depth are always painted together."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.label = np.full((h, w), SKY, np.uint8)
        self.cid = np.zeros((h, w), np.int32)  # entry 0 is the sky; its colour is computed per row later
        self.depth = np.full((h, w), SKY_DEPTH, np.float32)
        self.rgb, self.tex, self.glow = [(0.0, 0.0, 0.0)], [0.0], [(0.0, 0.0, 0.0)]

    def entry(self, rgb, tex: float = 0.06, emit: float = 0.0, glow=None) -> int:
        self.rgb.append(tuple(rgb))
        self.tex.append(tex)
        self.glow.append(tuple(emit * c for c in (glow if glow is not None else rgb)))
        return len(self.rgb) - 1

    def _box(self, x0, x1, y0, y1):
        # Round to pixel centres but keep at least one pixel so thin far objects (poles) do not vanish.
        xa, xb, ya, yb = (math.floor(v + 0.5) for v in (x0, x1, y0, y1))
        xb, yb = max(xb, xa + 1), max(yb, ya + 1)
        xa, ya, xb, yb = max(xa, 0), max(ya, 0), min(xb, self.w), min(yb, self.h)
        return (slice(ya, yb), slice(xa, xb)) if xa < xb and ya < yb else None

    def _paint(self, box, mask, label, cid, z):
        if label is not None:
            self.label[box][mask] = label
            self.depth[box][mask] = z
        self.cid[box][mask] = cid

    def rect(self, x0, x1, y0, y1, label, cid, z):
        box = self._box(x0, x1, y0, y1)
        if box is not None:
            self._paint(box, slice(None), label, cid, z)

    def ellipse(self, cx, cy, rx, ry, label, cid, z):
        box = self._box(cx - rx, cx + rx, cy - ry, cy + ry)
        if box is None:
            return
        yy = (np.arange(box[0].start, box[0].stop) + 0.5 - cy) / max(ry, 0.5)
        xx = (np.arange(box[1].start, box[1].stop) + 0.5 - cx) / max(rx, 0.5)
        self._paint(box, yy[:, None] ** 2 + xx[None, :] ** 2 <= 1.0, label, cid, z)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """[h, w] float32 value noise with unit-ish variance and features about ``cell`` pixels wide."""
    sh, sw = int(h / cell) + 2, int(w / cell) + 2
    small = rng.standard_normal((sh, sw), dtype=np.float32)
    y = (np.arange(h) + 0.5) * ((sh - 1) / h)
    x = (np.arange(w) + 0.5) * ((sw - 1) / w)
    y0, x0 = y.astype(np.intp), x.astype(np.intp)
    fy, fx = (y - y0).astype(np.float32)[:, None], (x - x0).astype(np.float32)
    rows = small[:, x0] * (1 - fx) + small[:, np.minimum(x0 + 1, sw - 1)] * fx  # interpolate the small axis first
    return rows[y0] * (1 - fy) + rows[np.minimum(y0 + 1, sh - 1)] * fy


class _Builder:
    """Draws one scene; all geometry in metres (X right, Y up, Z forward) projected with focal P."""

    def __init__(self, rng: np.random.Generator, h: int, w: int):
        self.rng, self.h, self.w = rng, h, w
        self.cv = _Canvas(h, w)
        u = rng.uniform
        self.yh, self.xv = h * u(0.36, 0.5), w * u(0.36, 0.64)
        self.focal, self.cam, self.zfar = w * u(0.7, 0.95), u(1.9, 2.8), u(60.0, 140.0)
        half, centre = u(3.0, 5.0), u(-0.3, 0.3)
        self.road = (centre - half, centre + half)
        side, strip = u(1.6, 3.2, 2), np.where(rng.random(2) < 0.4, 0.0, u(1.0, 5.0, 2))
        self.walk = (self.road[0] - side[0], self.road[1] + side[1])  # outer sidewalk edges
        self.front = (self.walk[0] - strip[0], self.walk[1] + strip[1])  # facade planes
        self.lanes = int(rng.integers(2, 5))

    def col(self, palette, jitter=0.08, **kw) -> int:
        base = np.asarray(palette[int(self.rng.integers(len(palette)))] if isinstance(palette[0], tuple)
                          else palette)
        rgb = np.clip(base * self.rng.uniform(1 - jitter, 1 + jitter) + self.rng.uniform(-0.03, 0.03, 3), 0, 1)
        return self.cv.entry(rgb, **kw)

    # world box / ellipse at depth z (Y measured up from the ground)
    def box(self, x0, x1, y0, y1, z, label, cid):
        p, c = self.focal / z, self.cam
        self.cv.rect(self.xv + p * x0, self.xv + p * x1, self.yh + p * (c - y1), self.yh + p * (c - y0),
                     label, cid, z)

    def oval(self, x, y, rx, ry, z, label, cid):
        p = self.focal / z
        self.cv.ellipse(self.xv + p * x, self.yh + p * (self.cam - y), p * rx, p * ry, label, cid, z)

    def skyline(self):
        """Far blocks closing the street, painted first so everything nearer covers them."""
        rng, z, p = self.rng, self.zfar, self.focal / self.zfar
        xw = (np.arange(self.w) + 0.5 - self.xv) / p
        block = np.floor(xw / rng.uniform(8, 20) + rng.random()).astype(np.intp) % 64
        heights = rng.uniform(5.0, 35.0, 64)
        trees = rng.random(64) < 0.25
        heights[trees] = rng.uniform(5.0, 12.0, int(trees.sum()))
        cids = np.array([self.col(_FACADES, 0.15) for _ in range(4)] + [self.col((0.26, 0.36, 0.2), tex=0.2)])
        top = self.yh - p * (heights[block] - self.cam)
        yy = np.arange(self.h)[:, None] + 0.5
        m = (yy >= top) & (yy < self.yh + p * self.cam)
        cv = self.cv
        cv.label[m] = np.broadcast_to(np.where(trees, VEGETATION, BUILDING).astype(np.uint8)[block], m.shape)[m]
        cv.cid[m] = np.broadcast_to(np.where(trees[block], cids[4], cids[block % 4]), m.shape)[m]
        cv.depth[m] = z

    def ground(self):
        rng, cv = self.rng, self.cv
        d = np.arange(self.h) + 0.5 - self.yh
        r0 = int(np.searchsorted(d, self.focal * self.cam / self.zfar))  # first row nearer than the skyline
        d = d[r0:]
        z = (self.focal * self.cam / d).astype(np.float32)
        xw = (np.arange(self.w) + 0.5 - self.xv)[None, :] * (self.cam / d)[:, None]  # lateral metres
        edges = np.array([self.front[0], self.walk[0], self.road[0], self.road[1], self.walk[1], self.front[1]])
        bins = np.searchsorted(edges, xw)
        t_l, t_r, walk = self.col(_TERRAINS, tex=0.18), self.col(_TERRAINS, tex=0.18), self.col(_SIDEWALKS)
        road = self.col((0.38, 0.38, 0.39), 0.15, tex=0.09)
        labels = np.array([TERRAIN, TERRAIN, SIDEWALK, ROAD, SIDEWALK, TERRAIN, TERRAIN], np.uint8)
        cid = np.array([t_l, t_l, walk, road, walk, t_r, t_r])[bins]
        # kerb stones and paving joints, so sidewalks read as sidewalks
        kerb = ((bins == 2) & (xw > self.road[0] - 0.25)) | ((bins == 4) & (xw < self.road[1] + 0.25))
        cid[kerb] = self.col((0.72, 0.72, 0.70), 0.05)
        joints = ((z % rng.uniform(1.0, 2.0)) < 0.12)[:, None] & ((bins == 2) | (bins == 4)) & ~kerb
        cid[joints] = self.col(np.asarray(self.cv.rgb[walk]) * 0.8, 0.02)
        # dashed lane separators (solid centre line on wide roads) and solid edge lines
        lane_w = (self.road[1] - self.road[0]) / self.lanes
        t = (xw - self.road[0]) / lane_w
        k = np.rint(t)
        dash = ((z + rng.uniform(0, 10)) % rng.uniform(7.0, 12.0)) < rng.uniform(2.5, 4.0)
        mark = (np.abs(t - k) * lane_w < 0.08) & (k >= 1) & (k <= self.lanes - 1) & dash[:, None]
        if rng.random() < 0.6:
            mark |= (bins == 3) & (np.abs(np.minimum(xw - self.road[0], self.road[1] - xw) - 0.35) < 0.08)
        cid[mark] = self.col((0.88, 0.88, 0.84), 0.05, tex=0.03)
        cv.label[r0:] = labels[bins]
        cv.cid[r0:] = cid
        cv.depth[r0:] = z[:, None]

    def facades(self):
        rng, cv, u = self.rng, self.cv, self.rng.uniform
        xc = np.arange(self.w) + 0.5
        left = xc < self.xv
        plane = np.where(left, self.front[0], self.front[1])
        zc = (self.focal * np.abs(plane) / np.maximum(np.abs(xc - self.xv), 1e-3)).astype(np.float32)
        # segments along each facade: (end depth, kind, height, colour, window spacing, floor height)
        seg_kind, seg_h, seg_cid = [], [], []
        seg_id = np.zeros(self.w, np.intp)
        for side in (True, False):
            ends = np.cumsum(rng.uniform(7.0, 30.0, 16))
            kinds = rng.choice(4, 16, p=(0.66, 0.2, 0.08, 0.06))  # building, trees, wall, fence
            idx = np.searchsorted(ends, zc) + len(seg_kind)
            seg_id = np.where(left == side, idx, seg_id)
            for k in kinds:
                seg_kind.append(k)
                seg_h.append(u(7.0, 24.0) if k == 0 else u(4.0, 11.0) if k == 1 else u(1.0, 2.4))
                seg_cid.append(self.col(_FACADES, 0.12, tex=0.05) if k == 0
                               else self.col((0.22, 0.36, 0.15), 0.2, tex=0.22) if k == 1
                               else self.col(((0.60, 0.58, 0.55), (0.55, 0.40, 0.32)), 0.1) if k == 2
                               else self.col(((0.50, 0.38, 0.25), (0.42, 0.44, 0.45)), 0.1))
            seg_kind.append(0)  # sentinel past the last end: never reached because ends exceed zfar
            seg_h.append(0.0)
            seg_cid.append(0)
        seg_id = np.minimum(seg_id, len(seg_kind) - 1)
        kind = np.asarray(seg_kind)[seg_id]
        hgt = np.asarray(seg_h)[seg_id]
        bumps = rng.uniform(0.6, 1.8) * (np.sin(zc * rng.uniform(0.3, 0.8) + rng.uniform(0, 6))
                                         + 0.6 * np.sin(zc * rng.uniform(1.0, 2.0) + rng.uniform(0, 6)))
        hgt = np.where(kind == 1, hgt + bumps, hgt)
        p = self.focal / zc
        top, bottom = self.yh - p * (hgt - self.cam), self.yh + p * self.cam
        bottom[zc >= self.zfar] = -1.0  # beyond the skyline: nothing
        yy = np.arange(self.h)[:, None] + 0.5
        m = (yy >= top) & (yy < bottom)
        yw = self.cam - (yy - self.yh) / p  # world height of each pixel on its facade
        fence = (kind == 3) & ((zc / 0.35) % 1.0 > 0.5)  # gaps between fence boards show what lies behind
        m &= ~(fence[None, :] & (np.abs(yw - hgt * 0.5) < hgt * 0.35))
        labels = np.array([BUILDING, VEGETATION, WALL, FENCE], np.uint8)[kind]
        cid = np.broadcast_to(np.asarray(seg_cid)[seg_id], m.shape).copy()
        # window grid, drawn only where a window spans a few pixels so it does not alias into noise
        spacing, floor_h = rng.uniform(2.2, 3.6), rng.uniform(2.8, 3.6)
        wz = ((zc / spacing) % 1.0 > 0.3) & ((zc / spacing) % 1.0 < 0.75) & (p * spacing > 4) & (kind == 0)
        fy = yw / floor_h
        wy = (fy % 1.0 > 0.3) & (fy % 1.0 < 0.78) & (yw > floor_h * 0.3) & (yw < hgt - 0.8)
        win = m & wz[None, :] & wy & (p * floor_h > 5)
        lit_table = rng.random(997) < rng.uniform(0.2, 0.6)
        cell = (np.floor(fy).astype(np.intp) * 131 + np.floor(zc / spacing).astype(np.intp)[None, :] * 7
                + seg_id[None, :] * 29) % 997
        lit = lit_table[cell]
        dark = self.col((0.2, 0.24, 0.3), 0.15, tex=0.1)
        bright = self.col((0.26, 0.3, 0.36), 0.15, tex=0.1, emit=1.0, glow=(1.0, 0.82, 0.5))
        cid[win] = np.where(lit[win], bright, dark)
        cv.label[m] = np.broadcast_to(labels, m.shape)[m]
        cv.cid[m] = cid[m]
        cv.depth[m] = np.broadcast_to(zc, m.shape)[m]

    def car(self, x, z):
        u, b = self.rng.uniform, self.box
        w, hb, ht = u(1.65, 2.0), u(0.85, 1.1), u(1.35, 1.75)
        body, glass, tyre = self.col(_CARS), self.col((0.13, 0.16, 0.21)), self.col((0.05, 0.05, 0.05))
        oncoming = x < (self.road[0] + self.road[1]) / 2 and self.rng.random() < 0.7
        lamp = self.col((0.92, 0.92, 0.85), 0.03, emit=1.0) if oncoming else self.col(
            (0.75, 0.1, 0.08), 0.05, emit=0.7, glow=(1.0, 0.1, 0.05))
        x0, x1 = x - w / 2, x + w / 2
        b(x0 + 0.05, x0 + 0.38, 0, 0.45, z, CAR, tyre)
        b(x1 - 0.38, x1 - 0.05, 0, 0.45, z, CAR, tyre)
        b(x0 + 0.38, x1 - 0.38, 0, 0.3, z, None, self.col((0.12, 0.12, 0.12), 0.1))  # shadow on the road
        b(x0, x1, 0.28, hb, z, CAR, body)
        b(x0 + 0.12 * w, x1 - 0.12 * w, hb, ht, z, CAR, body)
        b(x0 + 0.17 * w, x1 - 0.17 * w, hb + 0.06, ht - 0.07, z, CAR, glass)
        b(x0 + 0.04, x0 + 0.34, hb - 0.24, hb - 0.08, z, CAR, lamp)
        b(x1 - 0.34, x1 - 0.04, hb - 0.24, hb - 0.08, z, CAR, lamp)
        b(x - 0.25, x + 0.25, 0.42, 0.58, z, CAR, self.col((0.9, 0.9, 0.86), 0.03))

    def person(self, x, z):
        u, b = self.rng.uniform, self.box
        s = u(1.5, 1.9)
        shirt, pants, skin = self.col((u(0.1, 0.85), u(0.1, 0.85), u(0.1, 0.85)), 0.1), \
            self.col((0.15, 0.17, 0.25), 0.4), self.col(_SKINS)
        stride = u(0.0, 0.12)
        b(x - 0.13 - stride, x - 0.02, 0, 0.48 * s, z, PERSON, pants)
        b(x + 0.02, x + 0.13 + stride, 0, 0.48 * s, z, PERSON, pants)
        b(x - 0.21, x + 0.21, 0.46 * s, 0.83 * s, z, PERSON, shirt)
        b(x - 0.27, x - 0.2, 0.5 * s, 0.8 * s, z, PERSON, shirt)
        b(x + 0.2, x + 0.27, 0.5 * s, 0.8 * s, z, PERSON, shirt)
        self.oval(x, 0.915 * s, 0.1, 0.125, z, PERSON, skin)

    def tree(self, x, z):
        u = self.rng.uniform
        trunk, crown = u(1.8, 3.2), self.col((0.2, 0.36, 0.14), 0.25, tex=0.25)
        self.box(x - 0.15, x + 0.15, 0, trunk + 0.5, z, VEGETATION, self.col((0.3, 0.22, 0.15)))
        rx, ry = u(1.2, 2.6), u(1.4, 3.0)
        self.oval(x, trunk + ry * 0.8, rx, ry, z, VEGETATION, crown)
        self.oval(x + u(-0.6, 0.6) * rx, trunk + ry * u(1.0, 1.5), rx * 0.65, ry * 0.6, z, VEGETATION, crown)

    def pole(self, x, z):
        u, b, rng = self.rng.uniform, self.box, self.rng
        towards = 1.0 if x < (self.road[0] + self.road[1]) / 2 else -1.0  # arms reach over the road
        metal = self.col(((0.5, 0.5, 0.5), (0.2, 0.24, 0.2), (0.62, 0.62, 0.6)), 0.08)
        pw = u(0.1, 0.18) / 2
        kind = rng.choice(3, p=(0.45, 0.3, 0.25))  # sign, traffic light, street lamp
        ph = u(2.6, 3.8) if kind == 0 else u(3.5, 5.5) if kind == 1 else u(6.0, 9.0)
        b(x - pw, x + pw, 0, ph, z, POLE, metal)
        if kind == 0:
            for k in range(1 + int(rng.random() < 0.3)):
                sz, top = u(0.55, 0.9), ph - k * 0.95
                plate, inner = self.col(_SIGNS, 0.06), self.col(_SIGNS, 0.06)
                if rng.random() < 0.5:
                    self.oval(x, top - sz / 2, sz / 2, sz / 2, z, SIGN, plate)
                else:
                    b(x - sz / 2, x + sz / 2, top - sz, top, z, SIGN, plate)
                b(x - sz / 5, x + sz / 5, top - sz * 0.6, top - sz * 0.4, z, SIGN, inner)
            return
        reach = u(2.0, 4.5) if kind == 1 and rng.random() < 0.5 else u(0.8, 1.8) if kind == 2 else 0.0
        ax = x + towards * reach
        if reach:
            b(min(x, ax), max(x, ax), ph - 0.12, ph, z, POLE, metal)
        if kind == 2:
            b(ax - 0.3, ax + 0.3, ph - 0.25, ph - 0.05, z, POLE, self.col((0.85, 0.85, 0.8), 0.03, emit=1.0,
                                                                       glow=(1.0, 0.85, 0.55)))
            return
        top = ph - 0.1 if reach else ph
        b(ax - 0.18, ax + 0.18, top - 1.0, top, z, LIGHT, self.col(((0.1, 0.1, 0.1), (0.55, 0.5, 0.12)), 0.1))
        on = int(rng.integers(3))
        for k in range(3):
            lamp = self.col(_LAMPS[k], 0.05, emit=1.0) if k == on else self.col((0.22, 0.22, 0.2), 0.1)
            self.oval(ax, top - 0.2 - 0.3 * k, 0.11, 0.11, z, LIGHT, lamp)

    def objects(self):
        rng, u = self.rng, self.rng.uniform
        znear = self.focal * self.cam / (self.h - self.yh)  # depth seen at the bottom row
        zmax = min(self.zfar * 0.8, 70.0)

        def depth(lo):
            lo = max(lo, znear * 1.2)
            return math.exp(u(math.log(lo), math.log(max(zmax, lo * 1.5))))

        def sidewalk_x(left, inner, outer):  # a lateral position on the left/right sidewalk band
            a, b = (self.walk[0], self.road[0]) if left else (self.road[1], self.walk[1])
            return a + (b - a) * (1 - u(inner, outer)) if left else a + (b - a) * u(inner, outer)

        def visible_from(x):  # nearest depth at which lateral position x is still inside the image
            edge = self.xv if x < 0 else self.w - self.xv
            return self.focal * abs(x) / edge * 0.8

        items = []
        lane_w = (self.road[1] - self.road[0]) / self.lanes
        for _ in range(int(rng.integers(2, 8))):
            if rng.random() < 0.3:  # parked at the kerb
                x = self.road[0] + 1.1 if rng.random() < 0.5 else self.road[1] - 1.1
            else:
                x = self.road[0] + lane_w * (int(rng.integers(self.lanes)) + 0.5) + u(-0.3, 0.3)
            items.append((depth(visible_from(x) + 2), self.car, x))
        for _ in range(int(rng.integers(1, 7))):
            x = sidewalk_x(rng.random() < 0.5, 0.2, 0.9)
            items.append((depth(visible_from(x)), self.person, x))
        for _ in range(int(rng.integers(1, 7))):
            left = rng.random() < 0.5
            x = sidewalk_x(left, 0.85, 0.95) if rng.random() < 0.6 else (
                (self.front[0] + self.walk[0]) / 2 if left else (self.front[1] + self.walk[1]) / 2)
            items.append((depth(visible_from(x)), self.tree, x))
        for _ in range(int(rng.integers(2, 6))):
            x = sidewalk_x(rng.random() < 0.5, 0.06, 0.15)
            items.append((depth(visible_from(x)), self.pole, x))
        for _ in range(int(rng.integers(0, 3))):  # unlabeled clutter (bins, boxes) -> ignore pixels
            x = sidewalk_x(rng.random() < 0.5, 0.4, 0.9)
            items.append((depth(visible_from(x)), self.clutter, x))
        for z, draw, x in sorted(items, key=lambda it: -it[0]):
            draw(x, z)

    def clutter(self, x, z):
        w, h = self.rng.uniform(0.4, 0.8), self.rng.uniform(0.6, 1.1)
        self.box(x - w / 2, x + w / 2, 0, h, z, IGNORE_INDEX, self.col(((0.2, 0.3, 0.22), (0.5, 0.45, 0.3))))

    def hood(self):
        """The ego vehicle's bonnet along the bottom edge, unlabeled as in Cityscapes."""
        xs = (np.arange(self.w) + 0.5) / self.w * 2 - 1
        top = self.h - self.h * self.rng.uniform(0.03, 0.08) * (1 - 0.6 * xs**2)
        m = np.arange(self.h)[:, None] + 0.5 >= top[None, :]
        self.cv.label[m], self.cv.cid[m], self.cv.depth[m] = IGNORE_INDEX, self.col((0.1, 0.1, 0.12)), 1.0

    def shade(self) -> Scene:
        rng, cv, h, w = self.rng, self.cv, self.h, self.w
        rgb_t, tex_t = np.asarray(cv.rgb, np.float32), np.asarray(cv.tex, np.float32)
        noise = rng.standard_normal((h, w), dtype=np.float32) * 0.5 + smooth_noise(rng, h, w, 6.0)
        rgb = rgb_t[cv.cid] * (1 + tex_t[cv.cid] * noise)[..., None]
        # aerial perspective: far things fade towards the pale horizon
        haze = np.array((0.78, 0.82, 0.88), np.float32)
        a = (0.55 * (1 - np.exp(-cv.depth / (self.zfar * 1.5))))[..., None]
        rgb += (haze - rgb) * a
        t = np.clip((np.arange(h, dtype=np.float32) + 0.5) / max(self.yh, 1.0), 0, 1)[:, None] ** 1.5
        zenith = np.array((0.28, 0.48, 0.82), np.float32) * rng.uniform(0.85, 1.15)
        sky = zenith * (1 - t) + haze * t
        clouds = np.clip(smooth_noise(rng, h, w, 20.0) * rng.uniform(0.3, 0.8) - 0.15, 0, 1)[..., None]
        sky = sky[:, None, :] + (0.95 - sky[:, None, :]) * clouds
        rgb = np.where((cv.label == SKY)[..., None], sky, rgb)
        glow = np.asarray(cv.glow, np.float32)
        return Scene(label=cv.label, depth=cv.depth, light=glow.max(axis=1)[cv.cid], base=np.clip(rgb, 0, 1),
                     cid=cv.cid, glow_table=glow, horizon=self.yh, vanish_x=self.xv)


def build_scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    """Lay out and colour one street scene of ``size = (H, W)`` pixels from ``rng``."""
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive (H, W), got {size}")
    b = _Builder(rng, h, w)
    b.skyline()
    b.ground()
    b.facades()
    b.objects()
    if rng.random() < 0.5:
        b.hood()
    return b.shade()
