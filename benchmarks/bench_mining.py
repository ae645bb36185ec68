"""Style-mining speed: styles/s (patches mined per second), peak memory and achieved TFLOP/s of PIN.

Defaults are the paper's and ``famix mine``'s: RN50 CLIP, batches of 16 crops of 768x768, a 3x3 grid (144
patches per batch), 100 PIN steps (SGD, momentum 0.9, weight decay 1e-4, the recipe's lr); on CUDA bf16
autocast (restyle, pooling and CLIP tail in bf16), channels_last, and the patches of ``mine.pin_crops``
crops (64: 4 batches) optimised in one PIN call. Weights are random, labels are random (each patch's
dominant class is then one of the 19 classes at random) and the text targets are random unit vectors (the
text tower is not timed). One iteration = one call of the real mining step,
``famix.style.patch_mining.mine_batches``, on the batches of one PIN call: per batch stem + layer1 features,
patch statistics and normalisation, patch choice; then ``pin_optimize`` over all their chosen patches.

    python benchmarks/bench_mining.py                                    # famix mine's settings (GPU)
    python benchmarks/bench_mining.py --pin-crops 16 --cuda-graph        # one batch per call, CUDA graph
    python benchmarks/bench_mining.py --recipe official                  # the official recipe
    python benchmarks/bench_mining.py --backbone tiny-rn --size 128 --batch 2 --steps 5 --iters 3  # CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch

from common import base_parser, count_flops, peak_memory_bytes, report, setup, time_iterations
from famix.data.trainids import CLASS_NAMES, IGNORE_INDEX
from famix.models.clip import build_clip
from famix.models.towers import style_channels, style_grid, style_tail, tower
from famix.stages.mine import CUDA_PIN_CROPS
from famix.style.patch_mining import RECIPE_LR, MiningSettings, mine_batches
from famix.style.vocabulary import DEFAULT_STYLE_WORDS


def main() -> None:
    p = base_parser(__doc__.splitlines()[0], batch=16, size="768", iters=3, warmup=1)
    p.add_argument("--grid", type=int, default=3, help="patches per side")
    p.add_argument("--steps", type=int, default=100, help="PIN optimisation steps per batch")
    p.add_argument("--recipe", default="famix", choices=tuple(RECIPE_LR), help="mine.recipe")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    p.add_argument("--per-class", type=int, default=None, help="mine.per_class (famix recipe)")
    crops_help = f"mine.pin_crops: crops per PIN call (default: {CUDA_PIN_CROPS} on CUDA, else one batch)"
    p.add_argument("--pin-crops", type=int, default=None, help=crops_help)
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CLIP tower and PIN in channels_last (default: on CUDA, as famix mine)",
    )
    p.add_argument("--cuda-graph", action="store_true", help="mine.cuda_graph: replay a captured PIN step")
    args = p.parse_args()
    device, amp_dtype, (h, w) = setup(args)
    cuda = device.type == "cuda"
    channels_last = cuda if args.channels_last is None else args.channels_last
    crops = args.pin_crops or (CUDA_PIN_CROPS if cuda else args.batch)
    per_call = max(1, crops // args.batch)  # batches per PIN call, as famix.stages.mine.pin_batches
    settings = MiningSettings(
        grid=args.grid,
        steps=args.steps,
        vocabulary=DEFAULT_STYLE_WORDS,
        recipe=args.recipe,
        lr=args.lr,
        per_class=args.per_class,
    )

    clip = build_clip(args.backbone, seed=0).to(device).requires_grad_(False)
    visual, pool = clip.visual, style_grid(clip.visual)  # 56 for RN50, 14 for ViT-B/16
    channels_last = channels_last and tower(visual).channels_last  # as famix mine: NHWC for ResNets only
    if channels_last:
        visual = visual.to(memory_format=torch.channels_last)
    g = torch.Generator(device).manual_seed(0)
    images = torch.randn(args.batch, 3, h, w, device=device, generator=g)  # every batch: the same crops
    labels = torch.randint(len(CLASS_NAMES), (args.batch, h, w), device=device, generator=g)
    n = args.batch * args.grid**2
    dim = style_tail(visual, torch.zeros(1, style_channels(visual), pool, pool, device=device)).shape[-1]
    text = torch.randn(n, dim, device=device, generator=g)
    text = text / text.norm(dim=-1, keepdim=True)  # [N, D] unit-norm targets

    def step(s: MiningSettings):
        batches = [(images, labels, torch.Generator().manual_seed(k)) for k in range(per_call)]
        return mine_batches(
            visual,
            lambda prompts: text[: len(prompts)],  # random targets in place of the (untimed) text tower
            batches,
            CLASS_NAMES,
            s,
            pool,
            IGNORE_INDEX,
            amp_dtype,
            channels_last,
            args.cuda_graph,
        )

    mined = sum(len(b.classes) for b in step(dataclasses.replace(settings, steps=0)))  # styles per iteration
    flops, seconds = time_iterations(lambda: step(settings), device, args.warmup, args.iters)
    peak = peak_memory_bytes(device)
    # exact FLOPs of one PIN step (forward + backward through the CLIP tail): step(1 PIN step) - step(0)
    one, zero = (dataclasses.replace(settings, steps=k) for k in (1, 0))
    per_step = (count_flops(lambda: step(one)) - count_flops(lambda: step(zero))) / mined / 1e9
    graphed = args.cuda_graph and cuda and amp_dtype != torch.float16
    report(
        "mining",
        args,
        device,
        amp_dtype,
        flops,
        seconds,
        backbone=args.backbone,
        items=mined,
        unit="styles",
        peak_bytes=peak,
        notes=[
            f"recipe={settings.recipe} lr={settings.lr} grid={args.grid} ({n * per_call} patches/iter in "
            f"{per_call} batch(es) of {args.batch} crops, {mined} mined) PIN steps={args.steps} pool={pool}",
            f"channels_last={channels_last} cuda_graph={graphed}",
            f"{per_step:.2f} GFLOP per PIN step per patch; "
            f"{statistics.median(seconds) / max(args.steps, 1):.3f} s per PIN step of the whole call",
        ],
    )


if __name__ == "__main__":
    main()
