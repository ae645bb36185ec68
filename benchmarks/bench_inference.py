"""Inference speed: images/s, peak memory and achieved TFLOP/s of whole-image segmentation.

Defaults are the paper's evaluation setting: RN50, output stride 16, batch 4, full 1024x2048 Cityscapes
frames, eval mode under ``torch.inference_mode``, bf16 autocast on CUDA, channels_last. Weights are random.
One iteration = ``model(images)`` -> logits [B, 19, H, W] (upsampled to the input size; no argmax, no data
loading).

    python benchmarks/bench_inference.py                                 # paper sizes (GPU)
    python benchmarks/bench_inference.py --backbone tiny-rn --size 128 --batch 2 --iters 3   # CPU smoke run
"""

from __future__ import annotations

import argparse

import torch

from common import autocast, base_parser, report, setup, time_iterations
from famix.config import ModelConfig
from famix.models.build import build_segmenter


def main() -> None:
    p = base_parser(__doc__.splitlines()[0], batch=4, size="1024x2048", iters=10, warmup=3)
    p.add_argument("--output-stride", type=int, default=16, choices=(8, 16))
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args()
    device, amp_dtype, (h, w) = setup(args)

    model = build_segmenter(ModelConfig(backbone=args.backbone, output_stride=args.output_stride), seed=0)
    model = model.to(device).eval()
    images = torch.randn(args.batch, 3, h, w, device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.inference_mode(), autocast(device, amp_dtype):
            model(images)  # [B, K, H, W]

    flops, seconds = time_iterations(step, device, args.warmup, args.iters)
    report(
        "inference",
        args,
        device,
        amp_dtype,
        flops,
        seconds,
        backbone=f"{args.backbone} OS{args.output_stride}",
        notes=[f"channels_last={args.channels_last}"],
    )


if __name__ == "__main__":
    main()
