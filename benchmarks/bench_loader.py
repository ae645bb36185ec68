"""Input pipeline benchmark: what one training item costs a data-loader worker, and loader throughput.

Writes full-size fake GTA5 files (1914x1052 RGB PNG photos-like images, palette PNG labelId maps) unless
``--root`` names real ones, then measures, interleaved in one run so that a busy machine affects both alike:

- ``bare decode``: ``torchvision.io.decode_png`` of the image and label files, nothing else;
- ``famix item``: one training item as a worker hands it over (``famix train``'s dataset and transform:
  decode, random 768 crop, flip, label map, the item's augmentation parameters);

and reports CPU ms per item, their ratio, and a ``DataLoader`` with ``--workers`` processes in items/s.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402, F401  (puts this checkout's src/ on the path when famix is not installed)
from famix.data.datasets import build_dataset  # noqa: E402
from famix.engine.train import make_source_dataset  # noqa: E402

GTA5_SIZE = (1052, 1914)  # (H, W)


def write_fake_gta5(root: Path, n: int, seed: int = 0) -> None:
    """``n`` GTA5-layout pairs whose PNGs compress about as well as real renders (areas, edges, noise)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    h, w = GTA5_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        blocks = rng.integers(0, 34, (h // 64 + 1, w // 64 + 1), dtype=np.uint8)
        label = np.repeat(np.repeat(blocks, 64, 0), 64, 1)[:h, :w]
        base = rng.integers(0, 256, (34, 3)).astype(np.float32)[label]
        shade = (0.6 + 0.4 * np.sin(yy / 97.0 + i) * np.cos(xx / 131.0))[..., None]
        image = np.clip(base * shade + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:05d}.png")
        im = Image.fromarray(label, mode="P")
        im.putpalette(list(rng.integers(0, 256, 768, dtype=np.uint8)))
        im.save(root / "labels" / f"{i:05d}.png")


def bare_decode(image: Path, label: Path) -> None:
    from torchvision.io import ImageReadMode, decode_png, read_file

    decode_png(read_file(str(image)))
    decode_png(read_file(str(label)), ImageReadMode.UNCHANGED)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", help="an existing GTA5 folder (default: write fake full-size files)")
    p.add_argument("--images", type=int, default=8, help="fake pairs to write")
    p.add_argument("--rounds", type=int, default=3, help="passes over the images (the median is reported)")
    p.add_argument("--crop", type=int, default=768)
    p.add_argument("--workers", type=int, default=2, help="DataLoader processes for the throughput row")
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(1)  # a worker's view: one thread per process
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        if not args.root:
            write_fake_gta5(root, args.images)
        dataset = make_source_dataset(f"gta5:{root}", args.crop, jitter=0.8, hflip=0.5)
        pairs = build_dataset(f"gta5:{root}").pairs
        bare, item = [], []
        for r in range(args.rounds):
            for i, pair in enumerate(pairs):
                t = time.process_time()
                bare_decode(pair.image, pair.label)
                bare.append(time.process_time() - t)
                t = time.process_time()
                dataset[(i, r * 1000 + i)]
                item.append(time.process_time() - t)
        b, m = statistics.median(bare) * 1000, statistics.median(item) * 1000
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=args.batch,
            sampler=[(i % len(pairs), i) for i in range(args.batch * 4)],
            num_workers=args.workers,
            persistent_workers=False,
        )
        t = time.perf_counter()
        count = sum(images.shape[0] for images, *_ in loader)
        rate = count / (time.perf_counter() - t)
    print(f"# famix input pipeline, {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print("| work | CPU ms / item | ratio to bare decode | loader items/s | items/s per worker |")
    print("|---|---|---|---|---|")
    print(f"| bare decode_png (image + label) | {b:.1f} | 1.00 | | |")
    print(
        f"| famix training item ({args.crop} crop) | {m:.1f} | {m / b:.2f} | {rate:.1f} "
        f"({args.workers} workers, batch {args.batch}) | {rate / max(args.workers, 1):.1f} |"
    )


if __name__ == "__main__":
    main()
