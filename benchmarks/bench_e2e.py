"""End-to-end speed of ``famix train`` and ``famix eval`` from full-size PNGs on disk, data loading included.

Writes fake files in the GTA5 layout (training source, 1914x1052) and the Cityscapes layout (evaluation,
2048x1024), then runs the real entry points with random CLIP weights and a random style bank:

- ``train``: ``famix.engine.train.train`` for ``--iters`` steps; images/s from the step times it logs,
  after the first ``--warmup`` steps (loader start-up and cuDNN autotuning excluded);
- ``eval``: ``famix.engine.evaluate.evaluate_specs`` over the fake Cityscapes val split, wall clock;
- ``validation share``: the preset's validation (``--val-images`` at the eval rate every ``--val-interval``
  steps) as a share of the run's wall time.

Meant for a GPU (``docs/gpu.md``); on a CPU shrink it, e.g. ``--backbone tiny-rn --crop 128 --batch 2
--iters 6 --warmup 2 --eval-images 2 --workers 2``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loader import write_fake_gta5  # noqa: E402
from famix.config import Config  # noqa: E402
from famix.data.trainids import CLASS_NAMES  # noqa: E402
from famix.engine.amp import amp_dtype  # noqa: E402
from famix.engine.checkpoint import load_segmenter  # noqa: E402
from famix.engine.distributed import resolve_device  # noqa: E402
from famix.engine.evaluate import evaluate_specs  # noqa: E402
from famix.models.build import build_segmenter  # noqa: E402
from famix.stages.train import run as train  # noqa: E402
from famix.style.bank import StyleBank  # noqa: E402


def write_fake_cityscapes(root: Path, n: int, size=(1024, 2048), seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(n):
        img_dir, gt_dir = root / "leftImg8bit" / "val" / "city", root / "gtFine" / "val" / "city"
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        blocks = rng.integers(0, 34, (h // 64 + 1, w // 64 + 1), dtype=np.uint8)
        label = np.repeat(np.repeat(blocks, 64, 0), 64, 1)[:h, :w]
        image = np.clip(rng.integers(0, 256, (34, 3))[label] + rng.normal(0, 6, (h, w, 3)), 0, 255)
        Image.fromarray(image.astype(np.uint8)).save(img_dir / f"city_{i:06d}_000019_leftImg8bit.png")
        Image.fromarray(label).save(gt_dir / f"city_{i:06d}_000019_gtFine_labelIds.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="RN50")
    p.add_argument("--crop", type=int, default=768)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: famix's)")
    p.add_argument("--images", type=int, default=32, help="fake GTA5 pairs on disk")
    p.add_argument("--eval-images", type=int, default=32, help="fake Cityscapes val pairs")
    p.add_argument("--eval-size", default="1024x2048")
    p.add_argument("--eval-batch", type=int, default=4)
    p.add_argument("--val-images", type=int, default=1000, help="the preset's validation split size")
    p.add_argument("--val-interval", type=int, default=750, help="the preset's validation interval")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_fake_gta5(tmp / "gta5", args.images)
        eval_size = tuple(int(v) for v in args.eval_size.lower().split("x"))
        write_fake_cityscapes(tmp / "cs", args.eval_images, eval_size)
        cfg = Config()
        cfg.model.backbone, cfg.model.weights = args.backbone, None
        cfg.data.train, cfg.data.val, cfg.data.crop = f"gta5:{tmp / 'gta5'}", [], args.crop
        cfg.data.batch_size = args.batch
        if args.workers is not None:
            cfg.data.workers = args.workers
        cfg.train.out, cfg.train.iterations = str(tmp / "run"), args.iters
        cfg.train.log_interval, cfg.train.val_interval = 1, args.iters
        cfg.run.device = args.device
        channels = build_segmenter(cfg.model).style_channels
        bank = StyleBank(list(CLASS_NAMES), channels)
        g = torch.Generator().manual_seed(0)
        bank.add(torch.randn(190, channels, generator=g), torch.rand(190, channels, generator=g) + 0.5,
                 torch.arange(190) % 19, 255)  # fmt: skip
        cfg.style.bank = str(tmp / "bank.safetensors")
        bank.save(cfg.style.bank)
        train(cfg)
        steps = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
        timed = [r["seconds"] for r in steps if "loss" in r and r["step"] > args.warmup]
        train_rate = args.batch * len(timed) / sum(timed)
        device = resolve_device(args.device)
        model, _ = load_segmenter(tmp / "run" / "latest.pt", device=device)
        amp = amp_dtype("auto", device)  # famix's default: bf16 where the device has it natively
        spec = f"cityscapes:{tmp / 'cs'}:val"
        evaluate_specs(model, [spec], 19, device, amp_dtype=amp, batch_size=args.eval_batch, progress=False)
        start = time.perf_counter()  # second pass timed: files in the page cache, kernels tuned
        evaluate_specs(model, [spec], 19, device, amp_dtype=amp, batch_size=args.eval_batch, progress=False)
        eval_rate = args.eval_images / (time.perf_counter() - start)
    run_s = args.val_interval * args.batch / train_rate
    val_s = args.val_images / eval_rate
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.machine()}"
    print(f"# famix end to end, {name}, torch {torch.__version__}, {args.backbone}")
    print("| work | setting | images/s |")
    print("|---|---|---|")
    print(f"| `famix train` from PNGs | batch {args.batch}, {args.crop} crops, {cfg.data.workers} workers | "
          f"{train_rate:.1f} |")  # fmt: skip
    print(f"| `famix eval` from PNGs, mIoU | {args.eval_size}, batch {args.eval_batch} | {eval_rate:.1f} |")
    print(f"| validation share | {args.val_images} images every {args.val_interval} steps | "
          f"{100 * val_s / (run_s + val_s):.1f} % of wall time |")  # fmt: skip


if __name__ == "__main__":
    main()
