"""Training-step speed: images/s, peak memory and achieved TFLOP/s of one FAMix training iteration.

Defaults are the paper's: RN50, output stride 16, batch 8, 768x768 crops, GTA5 freezing (last-block),
local style mixing (famix mode: Beta(0.1, 0.1) mixing with styles of the patch's dominant class, from a
random style bank), SGD with the poly schedule, bf16 autocast on CUDA, channels_last. Weights are random
(speed does not depend on them). One iteration is the body of ``famix.engine.train.train``'s loop:
``prepare_images`` (colour jitter and normalisation of the uint8 batch on the device), ``train_step``
(forward with mixing, ``SegmentationLoss``, backward, optimizer step) and the scheduler step, with the
optimizer, mixer and loss built as ``train`` builds them (data loading excluded).

    python benchmarks/bench_train.py                                    # paper sizes (GPU)
    python benchmarks/bench_train.py --backbone tiny-rn --size 128 --batch 2 --iters 3   # CPU smoke run
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from common import base_parser, output_stride, report, setup, time_iterations
from famix.config import Config, ModelConfig
from famix.data.trainids import IGNORE_INDEX
from famix.data.transforms import jitter_params
from famix.engine.loss import SegmentationLoss
from famix.engine.train import build_mixer, build_optimizer, prepare_images, train_step
from famix.models.build import build_segmenter
from famix.style.bank import StyleBank


def random_bank(class_names: list[str], channels: int, per_class: int, seed: int = 0) -> StyleBank:
    """A style bank of ``per_class`` random styles (mu, sigma [C]) for each class and for ignore."""
    g = torch.Generator().manual_seed(seed)
    bank = StyleBank(list(class_names), channels)
    classes = torch.arange(len(class_names) + 1).repeat_interleave(per_class)  # [N]
    classes[classes == len(class_names)] = IGNORE_INDEX
    mu = torch.randn(classes.numel(), channels, generator=g) * 0.5  # [N, C]
    sigma = torch.rand(classes.numel(), channels, generator=g) + 0.1  # [N, C]
    bank.add(mu, sigma, classes, IGNORE_INDEX)
    return bank


def random_labels(
    batch: int, h: int, w: int, num_classes: int, device: torch.device, block: int = 32
) -> torch.Tensor:
    """[B, H, W] long: blocky random trainIds with ~5% ignore, so that patches have dominant classes."""
    g = torch.Generator().manual_seed(1)
    coarse = torch.randint(0, num_classes, (batch, 1, -(-h // block), -(-w // block)), generator=g)
    coarse[torch.rand(coarse.shape, generator=g) < 0.05] = IGNORE_INDEX
    labels = F.interpolate(coarse.float(), size=(h, w), mode="nearest")[:, 0].long()
    return labels.to(device)


def main() -> None:
    p = base_parser(__doc__.splitlines()[0], batch=8, size="768", iters=10, warmup=3)
    p.add_argument("--output-stride", type=int, help="default: 16 (ResNet), the patch size (ViT)")
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
    args.output_stride = output_stride(args.backbone, args.output_stride)

    cfg = Config(
        model=ModelConfig(backbone=args.backbone, output_stride=args.output_stride, freeze=args.freeze)
    )
    cfg.data.batch_size, cfg.data.crop, cfg.style.mix = args.batch, h, args.mix
    cfg.train.channels_last, cfg.run.device, cfg.run.amp = args.channels_last, args.device, args.amp
    model = build_segmenter(cfg.model, seed=cfg.run.seed).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer, scheduler = build_optimizer(model, cfg)
    with tempfile.TemporaryDirectory() as tmp:  # the mixer reads its bank from a file, as in training
        if args.mix in ("famix", "augment"):
            cfg.style.bank = str(Path(tmp) / "bank.safetensors")
            bank = random_bank(cfg.model.class_names, model.style_channels, args.styles_per_class)
            bank.save(cfg.style.bank)
        mixer = build_mixer(cfg, model, device)
    if mixer is not None:
        mixer.generator.manual_seed(cfg.run.seed)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    criterion = SegmentationLoss(cfg.train.label_smoothing, IGNORE_INDEX)

    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (args.batch, 3, h, w), dtype=torch.uint8, generator=g).to(device)
    jitter = torch.stack([jitter_params(cfg.data.jitter, g) for _ in range(args.batch)])  # [B, 6]
    labels = random_labels(args.batch, h, w, cfg.model.num_classes, device)  # [B, H, W]

    def step() -> None:
        x = prepare_images(images, jitter, args.channels_last)  # [B, 3, H, W] float
        train_step(model, mixer, x, labels, optimizer, scaler, amp_dtype, criterion)
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
