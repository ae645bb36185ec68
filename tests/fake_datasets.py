"""Tiny fake benchmark datasets in the exact on-disk layouts (file names included), for the loader tests.

Images are H x W = 16 x 24 unless told; pixel (0, 0) of image k is (k, k, k) so tests can check that
each image came with its own label. Label rasters repeat a list of raw values over the image, so every
mapped id, some unmapped ids and the ignore value all occur.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 16, 24
CITYSCAPES_VALUES = [*range(34), 255]
MAPILLARY_VALUES = [*range(66), 255]
SYNTHIA_VALUES = [*range(23), 300]  # 300: an id above 8 bits must not wrap onto a class
BDD_VALUES = [*range(19), 19, 100, 254, 255]


def raster(values: list[int], h: int = H, w: int = W, first: int | None = None) -> np.ndarray:
    """[h, w] int array cycling through ``values`` in row-major order; pixel (0, 0) set to ``first``."""
    out = np.resize(np.asarray(values, dtype=np.int64), h * w).reshape(h, w)
    if first is not None:
        out[0, 0] = first
    return out


def write_image(path: Path, k: int, h: int = H, w: int = W) -> None:
    """An RGB image whose pixel (0, 0) is (k, k, k) (JPEG keeps a flat 8x8 block exact enough)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(k)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    image[:8, :8] = k
    if path.suffix == ".jpg":
        Image.fromarray(image).save(path, quality=100)
    else:
        Image.fromarray(image).save(path)


def write_palette(path: Path, ids: np.ndarray) -> None:
    """An 8-bit palette ('P') PNG whose indices are ``ids`` (as GTA5, Mapillary and Cityscapes ship)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    rng = np.random.default_rng(0)
    im.putpalette(rng.integers(0, 255, 768, dtype=np.uint8).tolist())
    im.save(path)


def write_grey(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8), mode="L").save(path)


def write_png16(path: Path, channels: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG from [h, w, 3] (PIL cannot write these; this is the PNG spec)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w, _ = channels.shape
    rows = b"".join(b"\x00" + channels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16-bit, colour type 2 = RGB
    png = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png)


def synthia_label(path: Path, first: int) -> np.ndarray:
    """Channel 0 = class ids, channels 1-2 = instance-like values that must be ignored."""
    ids = raster(SYNTHIA_VALUES, first=first)
    channels = np.stack([ids, 1000 + ids * 7, np.full_like(ids, 40000)], axis=-1)
    write_png16(path, channels)
    return ids


# ------------------------------------------------------------------------------- layouts


def cityscapes(root: Path, cities: dict[str, dict[str, int]]) -> None:
    """{split: {city: n_images}}; image k of the whole dataset gets pixel (0,0) = k and label id k+7."""
    k = 0
    for split, per_city in cities.items():
        for city, n in per_city.items():
            for i in range(n):
                stem = f"{city}_{i:06d}_000019"
                write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", k)
                gt = root / "gtFine" / split / city
                write_palette(gt / f"{stem}_gtFine_labelIds.png", raster(CITYSCAPES_VALUES, first=7 + k))
                write_palette(gt / f"{stem}_gtFine_color.png", raster([1, 2, 3]))  # must be ignored
                (gt / f"{stem}_gtFine_polygons.json").write_text("{}")
                k += 1


def gta5(root: Path, n: int, bad: tuple[int, ...] = ()) -> None:
    """Images 00001..n; the labels of ``bad`` ids are 2 pixels taller than their images."""
    for i in range(1, n + 1):
        write_image(root / "images" / f"{i:05d}.png", i)
        h = H + 2 if i in bad else H
        write_palette(root / "labels" / f"{i:05d}.png", raster(CITYSCAPES_VALUES, h=h, first=7 + i))


def synthia(root: Path, splits: dict[str, int]) -> None:
    k = 0
    for split, n in splits.items():
        for _ in range(n):
            write_image(root / "RGB" / split / f"{k:07d}.png", k)
            synthia_label(root / "GT" / "LABELS" / split / f"{k:07d}.png", first=1 + k % 22)
            k += 1


def bdd(root: Path, n: int, official: bool = False) -> None:
    for i in range(n):
        images = root / ("images/10k/val" if official else "images/val")
        labels = root / ("labels/sem_seg/masks/val" if official else "labels/val")
        write_image(images / f"7d2f7975-e{i:07d}.jpg", 10 * i)
        write_grey(labels / f"7d2f7975-e{i:07d}.png", raster(BDD_VALUES, first=i))


def mapillary(root: Path, sizes: list[tuple[int, int]], labels_dir: str = "labels") -> None:
    """One validation image per (h, w), named by index."""
    for k, (h, w) in enumerate(sizes):
        write_image(root / "validation" / "images" / f"img{k:03d}.jpg", 10 * k, h, w)
        write_palette(root / "validation" / labels_dir / f"img{k:03d}.png", raster(MAPILLARY_VALUES, h, w))


def acdc(
    root: Path, condition: str, split: str, n: int, sizes: dict[int, tuple[int, int]] | None = None
) -> None:
    for i in range(n):
        h, w = (sizes or {}).get(i, (H, W))
        frame = f"GOPR0475_frame_{i:06d}"
        write_image(root / "rgb_anon" / condition / split / "GOPR0475" / f"{frame}_rgb_anon.png", i, h, w)
        gt = root / "gt" / condition / split / "GOPR0475"
        write_palette(gt / f"{frame}_gt_labelIds.png", raster(CITYSCAPES_VALUES, h, w, first=7 + i))
        write_palette(gt / f"{frame}_gt_labelColor.png", raster([5], h, w))
