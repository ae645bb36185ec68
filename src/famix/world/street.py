"""The street of a synthetic scene: camera, ground plane, facades, skyline, and the shading of base colours.

``_Street`` holds one scene's drawing state (canvas, camera, street plan, a pool of uniform numbers) with the
helpers that project world boxes and ellipses onto the canvas; ``scene`` extends it with the
objects standing in the street and builds whole scenes.
"""

from __future__ import annotations

import math

import numpy as np

from famix.world.canvas import (
    _FACADES,
    _SEGMENT_LOOKS,
    _SIDEWALKS,
    _TERRAINS,
    BUILDING,
    FENCE,
    ROAD,
    SIDEWALK,
    SKY,
    TERRAIN,
    VEGETATION,
    WALL,
    Scene,
    _Canvas,
    _pick,
    noise_bank,
    noise_window,
)


class _Street:
    """Draws one scene's street; geometry in metres (X right, Y up from the ground, Z forward), focal in
    pixels. ``r``, ``u``, ``i`` and ``col`` draw from a pool of uniforms; ``box`` and ``oval`` project world
    shapes onto the canvas."""

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
