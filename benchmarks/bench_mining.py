"""Style-mining speed: styles/s (patches mined per second), peak memory and achieved TFLOP/s of PIN.

Defaults are the paper's: RN50 CLIP, batches of 16 crops of 768x768, a 3x3 grid (144 patches per batch),
100 PIN steps (SGD, lr 0.1, momentum 0.9, weight decay 1e-4), bf16 autocast on CUDA. Weights are random and
the text targets are random unit vectors (the text tower is not timed). One iteration = one batch as
``famix.engine.mine.mine_batch`` does it: stem + layer1 features, patch statistics and normalisation, then
``pin_optimize`` over all patches.

    python benchmarks/bench_mining.py                                    # paper sizes (GPU)
    python benchmarks/bench_mining.py --backbone tiny-rn --size 128 --batch 2 --steps 5 --iters 3  # CPU
"""

from __future__ import annotations

import statistics

import torch

from common import base_parser, count_flops, peak_memory_bytes, report, setup, time_iterations
from famix.models.clip import build_clip, clip_preprocess_size
from famix.style.mining import pin_optimize, split_patches
from famix.style.stats import normalize_patches, patch_stats


def main() -> None:
    p = base_parser(__doc__.splitlines()[0], batch=16, size="768", iters=3, warmup=1)
    p.add_argument("--grid", type=int, default=3, help="patches per side")
    p.add_argument("--steps", type=int, default=100, help="PIN optimisation steps per batch")
    p.add_argument("--lr", type=float, default=0.1)
    args = p.parse_args()
    device, amp_dtype, (h, w) = setup(args)

    clip = build_clip(args.backbone, seed=0).to(device).requires_grad_(False)
    visual, pool = clip.visual, clip_preprocess_size(clip) // 4  # 56 for RN50
    images = torch.randn(args.batch, 3, h, w, device=device)
    n = args.batch * args.grid**2
    g = torch.Generator(device).manual_seed(0)
    text = torch.randn(n, visual.output_dim, device=device, generator=g)
    text = text / text.norm(dim=-1, keepdim=True)  # [N, D] unit-norm targets

    def features() -> tuple[list, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            f = visual.layer1(visual.stem(images))  # [B, C, H/4, W/4]
            mu, sigma = patch_stats(f, args.grid)  # [B, C, G, G]
            f_norm = normalize_patches(f, mu, sigma)
        c = f.shape[1]
        flat_mu, flat_sigma = (t.permute(0, 2, 3, 1).reshape(-1, c) for t in (mu, sigma))  # [N, C]
        return split_patches(f_norm, args.grid), flat_mu, flat_sigma

    def pin(groups, flat_mu, flat_sigma, steps: int) -> None:
        pin_optimize(
            visual,
            groups,
            flat_mu,
            flat_sigma,
            text,
            pool,
            steps=steps,
            lr=args.lr,
            momentum=0.9,
            weight_decay=1e-4,
            amp_dtype=amp_dtype,
        )

    def mine_batch() -> None:
        pin(*features(), args.steps)

    flops, seconds = time_iterations(mine_batch, device, args.warmup, args.iters)
    peak = peak_memory_bytes(device)
    # exact FLOPs of one PIN step (forward + backward through the CLIP tail): pin(1 step) - pin(0 steps)
    feats = features()
    per_step = (count_flops(lambda: pin(*feats, 1)) - count_flops(lambda: pin(*feats, 0))) / n / 1e9
    report(
        "mining",
        args,
        device,
        amp_dtype,
        flops,
        seconds,
        backbone=args.backbone,
        items=n,
        unit="styles",
        peak_bytes=peak,
        notes=[
            f"grid={args.grid} ({n} patches/iter) PIN steps={args.steps} pool={pool}",
            f"{per_step:.2f} GFLOP per PIN step per patch; "
            f"{statistics.median(seconds) / args.steps:.3f} s per PIN step of the whole batch",
        ],
    )


if __name__ == "__main__":
    main()
