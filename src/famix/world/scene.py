"""Procedural street-scene layout for the synthetic world (styles: ``styles``; API: ``synthetic``).

A scene is a pinhole view down a straight street: a ground plane (road with lane dashes, kerbs, paved
sidewalks, terrain strips), two facade planes cut into segments (buildings with window grids, tree
masses, walls, fences), a distant skyline closing the street, and depth-sorted objects (cars, people,
trees, poles carrying signs, traffic lights or lamps). Every pixel gets a trainId, a depth in metres,
an emission strength (lit windows, lamps, car lights) and a plain "day" colour that styles restyle.

The street itself (camera, ground, facades, skyline, shading) is drawn by ``street`` and the
primitives (class ids, palettes, canvas, noise fields) live in ``canvas``; this module adds the
objects and builds whole scenes (``build_scene``). The public names of those modules are re-exported here.
"""

from __future__ import annotations

import math

import numpy as np

from famix.data.trainids import IGNORE_INDEX
from famix.world.canvas import (
    _CARS,
    _FENCES,
    _LAMPS,
    _METALS,
    _SIGNS,
    _SKINS,
    _WALLS,
    BUILDING,
    CAR,
    FENCE,
    LIGHT,
    PERSON,
    POLE,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    SKY_DEPTH,
    TERRAIN,
    VEGETATION,
    WALL,
    Scene,
    _hex,
    _pick,
    noise_bank,
    noise_window,
    resize,
    smooth_noise,
)
from famix.world.street import _Street

__all__ = [
    "BUILDING",
    "CAR",
    "FENCE",
    "LIGHT",
    "PERSON",
    "POLE",
    "ROAD",
    "SIDEWALK",
    "SIGN",
    "SKY",
    "SKY_DEPTH",
    "TERRAIN",
    "VEGETATION",
    "WALL",
    "Scene",
    "build_scene",
    "noise_bank",
    "noise_window",
    "resize",
    "smooth_noise",
]


class _Builder(_Street):
    """Draws one scene: the street of ``_Street`` and the objects in it, painted far to near."""

    def __init__(self, rng: np.random.Generator, h: int, w: int):
        super().__init__(rng, h, w)
        self._car_parts: list[int] = []

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
