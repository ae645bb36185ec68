"""Shared helpers for the speed benchmarks: arguments, device, timing, peak memory, FLOP counting, table.

FLOPs are counted, not estimated: one benchmark iteration (the first warm-up one) runs under
``torch.utils.flop_counter.FlopCounterMode``, which adds up the FLOPs of every matmul / convolution (and
their backward) actually dispatched. Elementwise ops are not counted, as usual for achieved-TFLOP/s figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

if importlib.util.find_spec("famix") is None:  # not installed: use this checkout's src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from famix.engine.amp import AMP_DTYPES, amp_dtype, cpu_description  # noqa: E402
from famix.engine.distributed import resolve_device  # noqa: E402
from famix.settings import AMP_CHOICES  # noqa: E402

BACKBONES = (
    *("RN50", "RN101", "tiny-rn", "tiny-clip", "ViT-B-16", "ViT-L-14", "tiny-vit", "tiny-vit-clip"),
    *("EVA02-B-16", "EVA02-L-14", "tiny-eva", "convnext_base_w", "convnext_large_d_320", "tiny-convnext"),
)


def output_stride(backbone: str, given: int | None) -> int:
    """The segmenter's output stride: ``given``, else 16 for a ResNet, and a token tower's patch size or a
    ConvNeXt's 32 (those towers' only stride: the sides their forward pads to)."""
    from famix.models.clip import build_clip, get_clip_config
    from famix.models.towers import tower

    if given:
        return given
    vision = get_clip_config(backbone)["vision_cfg"]
    if "timm_model_name" not in vision:  # open_clip's own towers: the config says it
        return vision.get("patch_size") or 16
    visual = build_clip(backbone).visual  # a timm trunk: its family knows
    family = tower(visual)
    return 16 if family.name == "resnet" else family.pad_multiple(visual)


def base_parser(
    description: str, *, batch: int, size: str, iters: int, warmup: int
) -> argparse.ArgumentParser:
    """Flags every benchmark takes; defaults are the paper's sizes."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: CUDA when available)")
    p.add_argument("--backbone", default="RN50", choices=BACKBONES, help="CLIP tower (random weights)")
    p.add_argument("--batch", type=int, default=batch, help="images per iteration")
    p.add_argument("--size", default=size, help="input size: S (S x S) or HxW")
    p.add_argument("--iters", type=int, default=iters, help="timed iterations (the median is reported)")
    p.add_argument(
        "--warmup",
        type=int,
        default=warmup,
        help="untimed iterations first (the first one also counts FLOPs)",
    )
    p.add_argument(
        "--amp",
        default="auto",
        choices=AMP_CHOICES,
        help="autocast, as famix's run.amp: auto = bf16 where native (CUDA, a CPU with AMX or avx512_bf16)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-header", action="store_true", help="print only the table row (to append to a table)")
    return p


def parse_size(text: str) -> tuple[int, int]:
    """ "768" -> (768, 768); "1024x2048" -> (1024, 2048)."""
    parts = text.lower().replace("*", "x").split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"--size must look like 768 or 1024x2048, got {text!r}")
    h, w = (int(p) for p in parts)
    return h, w


def setup(args: argparse.Namespace) -> tuple[torch.device, torch.dtype | None, tuple[int, int]]:
    """Resolve the device, the autocast dtype (None = no autocast: off, or not on CUDA; famix's rule) and
    the input size (H, W); seed everything."""
    if args.iters < 1 or args.warmup < 0 or args.batch < 1:
        raise SystemExit("--iters and --batch must be >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    return device, amp_dtype(args.amp, device), parse_size(args.size)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"CPU {cpu_description()}, {n} thread{'s' if n > 1 else ''}"


def count_flops(fn: Callable[[], object]) -> int:
    """Run ``fn`` once under FlopCounterMode and return the FLOPs it dispatched (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: peak bytes allocated by tensors since ``reset_peak_memory``. CPU: the process's peak resident
    set size (everything the process ever held: Python, torch, model, activations)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


@dataclass
class Result:
    benchmark: str
    device: str
    backbone: str
    batch: int
    size: str
    amp: str
    seconds: list[float]  # per timed iteration
    items_per_iter: int  # images (or styles) processed per iteration
    unit: str  # "images" | "styles"
    flops_per_iter: int
    peak_bytes: int
    memory_kind: str  # "CUDA alloc" | "CPU RSS"
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def throughput(self) -> float:
        return self.items_per_iter / self.median

    @property
    def tflops(self) -> float:
        return self.flops_per_iter / self.median / 1e12


def time_iterations(
    fn: Callable[[], object], device: torch.device, warmup: int, iters: int
) -> tuple[int, list[float]]:
    """Count FLOPs on the first warm-up iteration (an extra untimed one when ``warmup`` is 0), run the
    remaining warm-up iterations, then time ``iters`` iterations one by one (synchronising CUDA).

    Returns (FLOPs of one iteration, seconds per timed iteration). Peak memory is reset first.
    """
    reset_peak_memory(device)
    flops = count_flops(fn)
    synchronize(device)
    for _ in range(max(warmup - 1, 0)):
        fn()
    synchronize(device)
    seconds = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return flops, seconds


HEADER = (
    "benchmark",
    "device",
    "backbone",
    "batch",
    "size",
    "amp",
    "s/iter (median)",
    "throughput",
    "peak memory",
    "GFLOP/iter",
    "GFLOP/item",
    "TFLOP/s",
)


def table_row(r: Result) -> str:
    cells = (
        r.benchmark,
        r.device,
        r.backbone,
        str(r.batch),
        r.size,
        r.amp,
        f"{r.median:.3f}",
        f"{r.throughput:.2f} {r.unit}/s",
        f"{r.peak_bytes / 2**30:.2f} GiB ({r.memory_kind})",
        f"{r.flops_per_iter / 1e9:,.1f}",
        f"{r.flops_per_iter / r.items_per_iter / 1e9:,.1f}",
        f"{r.tflops:.3f}",
    )
    return "| " + " | ".join(cells) + " |"


def print_table(result: Result, header: bool = True) -> None:
    """Print a markdown table row (with the header unless ``header`` is False); notes go to stderr."""
    if header:
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "|".join("---" for _ in HEADER) + "|")
    print(table_row(result))
    sys.stdout.flush()
    for note in result.notes:  # on stderr, so that stdout stays one clean table when rows are appended
        print(f"# {result.benchmark}: {note}", file=sys.stderr)


def amp_name(dtype: torch.dtype | None) -> str:
    """The ``run.amp`` name of an autocast dtype ("off" for None)."""
    return {d: name for name, d in AMP_DTYPES.items()}[dtype]


def report(
    benchmark: str,
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype | None,
    flops: int,
    seconds: list[float],
    *,
    backbone: str,
    items: int | None = None,
    unit: str = "images",
    peak_bytes: int | None = None,
    notes: Sequence[str] = (),
) -> None:
    """Print the table row of a run timed by ``time_iterations`` (its FLOPs and seconds).

    Batch, size and ``--no-header`` come from ``args``; ``items`` processed per iteration default to the
    batch; peak memory is read now unless ``peak_bytes`` is given. The notes get the time of each iteration.
    """
    h, w = parse_size(args.size)
    result = Result(
        benchmark,
        device_name(device),
        backbone,
        args.batch,
        f"{h}x{w}",
        amp_name(dtype),
        seconds,
        args.batch if items is None else items,
        unit,
        flops,
        peak_memory_bytes(device) if peak_bytes is None else peak_bytes,
        "CUDA alloc" if device.type == "cuda" else "CPU RSS",
        notes=[*notes, "s/iter of each timed step: " + ", ".join(f"{s:.3f}" for s in seconds)],
    )
    print_table(result, header=not args.no_header)
