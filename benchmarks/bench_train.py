"""Training-step speed: images/s, peak memory and achieved TFLOP/s of one FAMix training iteration.

Defaults are the paper's: RN50, output stride 16, batch 8, 768x768 crops, GTA5 freezing (last-block),
local style mixing (famix mode: Beta(0.1, 0.1) mixing with styles of the patch's dominant class, from a
random style bank), SGD with the poly schedule, bf16 autocast on CUDA, channels_last. Weights are random
(speed does not depend on them). One iteration = forward with mixing + loss + backward + optimizer and
scheduler steps, exactly as ``famix.engine.train`` does it (data loading excluded).

    python benchmarks/bench_train.py                                    # paper sizes (GPU)
    python benchmarks/bench_train.py --backbone tiny-rn --size 128 --batch 2 --iters 3   # CPU smoke run
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import base_parser, report, setup, time_iterations
from famix.config import Config, ModelConfig
from famix.engine.train import build_optimizer
from famix.models.build import build_segmenter
from famix.style.mixing import LocalStyleMixer


def random_bank(
    channels: int, num_classes: int, per_class: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """A class-sorted bank of ``per_class`` random styles for each class and for ignore, packed as
    ``StyleBank.packed``: mu, sigma [N, C], counts, offsets [num_classes + 1] long."""
    g = torch.Generator().manual_seed(seed)
    n = per_class * (num_classes + 1)
    mu = torch.randn(n, channels, generator=g) * 0.5
    sigma = torch.rand(n, channels, generator=g) + 0.1
    counts = torch.full((num_classes + 1,), per_class, dtype=torch.long)
    offsets = torch.cumsum(counts, 0) - counts
    return tuple(t.to(device) for t in (mu, sigma, counts, offsets))


def random_labels(
    batch: int, h: int, w: int, num_classes: int, device: torch.device, block: int = 32
) -> torch.Tensor:
    """[B, H, W] long: blocky random trainIds with ~5% ignore (255), so patches have dominant classes."""
    g = torch.Generator().manual_seed(1)
    coarse = torch.randint(0, num_classes, (batch, 1, -(-h // block), -(-w // block)), generator=g)
    coarse[torch.rand(coarse.shape, generator=g) < 0.05] = 255
    labels = F.interpolate(coarse.float(), size=(h, w), mode="nearest")[:, 0].long()
    return labels.to(device)


def main() -> None:
    p = base_parser(__doc__.splitlines()[0], batch=8, size="768", iters=10, warmup=3)
    p.add_argument("--output-stride", type=int, default=16, choices=(8, 16))
    p.add_argument(
        "--freeze",
        default="last-block",
        choices=("last-block", "layer4", "none", "backbone"),
        help="backbone freezing (last-block = the paper's GTA5 setting)",
    )
    p.add_argument("--mix", default="famix", choices=("famix", "augment", "mixstyle", "none"))
    p.add_argument("--styles-per-class", type=int, default=64, help="rows per class of the random bank")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args()
    if args.batch < 2:
        p.error("--batch must be >= 2 for training (BatchNorm in the head's image pooling needs 2 values)")
    device, amp_dtype, (h, w) = setup(args)

    cfg = Config(
        model=ModelConfig(backbone=args.backbone, output_stride=args.output_stride, freeze=args.freeze)
    )
    cfg.data.batch_size, cfg.data.crop = args.batch, h
    model = build_segmenter(cfg.model, seed=0).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer, scheduler = build_optimizer(model, cfg)
    k = cfg.model.num_classes
    bank = (
        random_bank(model.low_channels, k, args.styles_per_class, device)
        if args.mix in ("famix", "augment")
        else None
    )
    mixer = LocalStyleMixer(
        args.mix, cfg.style.grid, cfg.style.beta, k, bank, generator=torch.Generator(device).manual_seed(0)
    )

    images = torch.randn(args.batch, 3, h, w, device=device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = random_labels(args.batch, h, w, k, device)
    restyle = None if args.mix == "none" else (lambda f: mixer(f, labels))

    def step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            logits = model(images, restyle=restyle)  # [B, K, H, W]
            loss = F.cross_entropy(
                logits.float(), labels, ignore_index=255, label_smoothing=cfg.train.label_smoothing
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

    flops, seconds = time_iterations(step, device, args.warmup, args.iters)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    report(
        "train",
        args,
        device,
        amp_dtype,
        flops,
        seconds,
        backbone=f"{args.backbone} OS{args.output_stride}",
        notes=[
            f"freeze={args.freeze} mix={args.mix} channels_last={args.channels_last} "
            f"trainable params={trainable / 1e6:.1f}M"
        ],
    )


if __name__ == "__main__":
    main()
