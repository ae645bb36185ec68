"""Inference speed: images/s, peak memory and achieved TFLOP/s of whole-image segmentation.

Defaults are the paper's evaluation setting: RN50, output stride 16, batch 4, full 1024x2048 Cityscapes
frames, bf16 autocast on CUDA, channels_last. Weights are random. One iteration =
``famix.engine.inference.predict_logits`` under ``eval_mode`` and ``torch.inference_mode``, as
``famix eval`` runs it: logits [B, 19, H, W] at the input size (no argmax, no data loading). The test-time
flags are those of ``famix eval``: ``--scale``, ``--ensemble``, ``--scales``, ``--flip``, ``--window``,
``--stride``.

    python benchmarks/bench_inference.py                                 # paper sizes (GPU)
    python benchmarks/bench_inference.py --backbone tiny-rn --size 128 --batch 2 --iters 3   # CPU smoke run
    python benchmarks/bench_inference.py --window 1024                   # sliding window, 1024 px tiles
    python benchmarks/bench_inference.py --flip --scales 0.75 1 1.25     # flip + 3 scales
"""

from __future__ import annotations

import argparse

import torch

from common import base_parser, output_stride, report, setup, time_iterations
from famix.config import ModelConfig
from famix.engine.inference import eval_mode, predict_logits
from famix.models.build import build_segmenter
from famix.settings import InferenceSettings


def main() -> None:
    p = base_parser(__doc__.splitlines()[0], batch=4, size="1024x2048", iters=10, warmup=3)
    p.add_argument("--output-stride", type=int, help="default: 16 (ResNet), the patch size (ViT)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--scale", type=float, default=None, help="test-time input scale, e.g. 0.5")
    p.add_argument("--ensemble", action="store_true", help="average logits at scale 1 and --scale")
    p.add_argument("--window", type=int, default=None, help="sliding-window inference with this tile size")
    p.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: 2/3 window)")
    p.add_argument("--flip", action="store_true", help="also the flipped input (famix eval --flip)")
    p.add_argument("--scales", type=float, nargs="+", help="average over these scales (famix eval --scales)")
    args = p.parse_args()
    device, amp_dtype, (h, w) = setup(args)
    args.output_stride = output_stride(args.backbone, args.output_stride)
    scales = tuple(args.scales) if args.scales else None
    tta = InferenceSettings(args.scale, args.ensemble, args.window, args.stride, args.flip, scales)

    model = build_segmenter(ModelConfig(backbone=args.backbone, output_stride=args.output_stride), seed=0)
    model = model.to(device)
    images = torch.randn(args.batch, 3, h, w, device=device)  # [B, 3, H, W]
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.inference_mode():
            predict_logits(model, images, tta, amp_dtype=amp_dtype)  # [B, K, H, W]

    with eval_mode(model):
        flops, seconds = time_iterations(step, device, args.warmup, args.iters)
    report(
        "inference",
        args,
        device,
        amp_dtype,
        flops,
        seconds,
        backbone=f"{args.backbone} OS{args.output_stride}",
        notes=[f"channels_last={args.channels_last} test time: {tta.describe() or 'plain'}"],
    )


if __name__ == "__main__":
    main()
