"""FLOPs and training memory of each CLIP tower at its preset's sizes, counted without computing anything.

Every number comes from the real famix modules run on PyTorch's ``meta`` device (shapes only, no data):
FLOPs from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, forward and backward, as
the speed benchmarks count them), memory from the tensors autograd saves for the backward pass
(``saved_tensors_hooks``) plus the weights, and the gradients and SGD momentum of the trainable ones. The
memory is an fp32 estimate of what a training step must hold, not a measurement: an allocator's peak also
holds transient buffers (run ``bench_train.py`` on a GPU for that).

    python benchmarks/count_towers.py                      # the presets below
    python benchmarks/count_towers.py --presets gta5_rn50 gta5_eva02l14 --batch 8
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

if importlib.util.find_spec("famix") is None:  # not installed: use this checkout's src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from famix.config import load_config  # noqa: E402
from famix.models.build import build_segmenter  # noqa: E402
from famix.models.clip import build_clip  # noqa: E402
from famix.models.towers import style_channels, style_grid, style_tail  # noqa: E402

PRESETS = ("gta5_rn50", "gta5_vitb16", "gta5_vitl14", "gta5_eva02b16", "gta5_eva02l14", "gta5_convnextl")
META = torch.device("meta")


def flops(fn) -> float:
    """GFLOPs ``fn`` dispatches (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs its forward."""
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def row(preset: str, batch: int, infer: tuple[int, int]) -> dict:
    cfg = load_config(preset)
    model_cfg = dataclasses.replace(cfg.model, weights=None)
    model = build_segmenter(model_cfg, seed=None).to(META).train()  # built on the CPU, then shapes only
    visual = build_clip(model_cfg.backbone).visual.to(META).requires_grad_(False)  # PIN: frozen CLIP
    crop = cfg.data.crop
    x = torch.zeros(batch, 3, crop, crop, device=META)

    def train_forward():
        return model(x, restyle=lambda f: f * 1.0).float().sum()  # the mixing point on the path

    def train_step():
        train_forward().backward()

    def infer_forward():
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, *infer, device=META))
        model.train()

    c, s = style_channels(visual), style_grid(visual)
    z = torch.zeros(1, c, s, s, device=META, requires_grad=True)

    def pin_step():  # one patch's PIN step: embed through the tail, gradient back to the restyled input
        style_tail(visual, z).sum().backward()

    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in params)
    state = 2 * sum(p.numel() * p.element_size() for p in trainable)  # gradients + SGD momentum
    return {
        "preset": preset,
        "backbone": model_cfg.backbone,
        "crop": crop,
        "backbone_trainable": sum(
            p.numel() for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")
        )
        / 1e6,
        "params": sum(p.numel() for p in params) / 1e6,
        "train": flops(train_step) / batch,
        "infer": flops(infer_forward),
        "site": f"{c} ch, {s}x{s}",
        "pin": flops(pin_step),
        "memory": (weights + state + saved_bytes(train_forward)) / 2**30,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--presets", nargs="+", default=list(PRESETS), help="config presets (their model and crop)"
    )
    p.add_argument("--batch", type=int, default=8, help="training batch for the memory estimate")
    p.add_argument("--infer", default="1024x2048", help="inference size HxW")
    args = p.parse_args()
    infer = tuple(int(v) for v in args.infer.split("x"))
    print(
        f"| preset | backbone | crop | parameters (M) | trainable backbone (M) | train GFLOP/image | "
        f"inference GFLOP/image ({args.infer}) | style site | PIN GFLOP/step/patch | TFLOP/style (100 steps) "
        f"| est. train memory, batch {args.batch} (fp32) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        r = row(preset, args.batch, infer)
        cells = [
            r["preset"],
            r["backbone"],
            r["crop"],
            f"{r['params']:.1f}",
            f"{r['backbone_trainable']:.2f}",
        ]
        cells += [f"{r['train']:,.0f}", f"{r['infer']:,.0f}", r["site"], f"{r['pin']:.1f}"]
        cells += [f"{100 * r['pin'] / 1e3:,.2f}", f"{r['memory']:.1f} GiB"]
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
