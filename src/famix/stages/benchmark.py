"""``famix benchmark``: one checkpoint's segmenter in every deployment variant, measured the same way: each
format of :data:`~famix.settings.BENCHMARK_FORMATS` (eager torch, ``torch.compile``, TorchScript, ONNX,
ONNX int8) in each precision (fp32; bf16 autocast for the torch formats, where the device has it natively;
ONNX files in their own), for speed (images/s, median of timed runs on random inputs), size, peak memory,
achieved GFLOP/s against the machine's own matmul peak in the same run, and mIoU per dataset against the
fp32 eager model's. Writes ``benchmark.md`` (table), ``benchmark.json`` (everything) and ``benchmark.png``
(speed against accuracy) into one folder; exports go to a temporary folder (``famix export`` writes the
files to keep).

The settings are ``famix.settings.BenchmarkSettings``; the exports are ``famix export``'s own
(:func:`famix.stages.export.export_model`, checked against the eager model as always), read back by
``engine/exported.py``.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torch.utils.flop_counter import FlopCounterMode

from famix.data.transforms import normalize
from famix.engine import pretrained
from famix.engine.amp import autocast, cpu_description, native_bf16
from famix.engine.checkpoint import checkpoint_label_set, load_checkpoint, load_segmenter, model_config
from famix.engine.checks import check_specs
from famix.engine.distributed import resolve_device, single_process
from famix.engine.evaluate import collate_by_size, evaluate
from famix.engine.exported import OnnxSegmenter, import_onnx_tools, load_exported
from famix.engine.outputs import check_folder, check_replaceable
from famix.io import atomic_write
from famix.models.towers import tower
from famix.progress import progress_bar
from famix.settings import BenchmarkSettings, ExportSettings
from famix.stages import export as export_stage
from famix.version import __version__

KIND = "famix benchmark"  # the mark of this command's files (JSON "kind", the table's title, PNG "Software")
FILES = {"table": "benchmark.md", "json": "benchmark.json", "picture": "benchmark.png"}
PLOT_HINT = 'pip install "famix[benchmark]"'
PEAK_SIZES = (2048, 4096)  # n of the n x n matmuls that measure the machine's peak: the best of them
PEAK_REPEATS = 3
UNEVEN = 1.5  # slowest / fastest timed run of a variant above which the table says so
SAMPLE_SECONDS = 0.001  # resident-set sampling interval during the timed runs
# ONNX files compute in their own precision (the precision column); the torch formats take autocast
OWN_PRECISION = {"onnx": "fp32", "onnx-int8": "int8"}
TORCH_FORMATS = ("eager", "compiled", "torchscript")
# ONNX operators that only an int8 (quantised) graph holds
INT8_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
}
MEMORY_NOTE = {
    "cpu": "peak MB: the process's highest resident set during the variant's warm-up and timed runs "
    "(Linux's high-water mark VmHWM, reset before them; else /proc/self/statm sampled every ms), above the "
    "resident set just before them, free heap memory returned to the system first: what running it adds "
    "(activations, workspace), the weights aside",
    "cuda": "peak MB: torch's highest CUDA allocation during the variant's warm-up and timed runs above the "
    "allocation before them (ONNX Runtime's memory is its own: not measured)",
}


@dataclass
class Row:
    """One variant: ``format`` x ``precision``, measured or skipped (``reason``)."""

    format: str
    precision: str
    reason: str | None = None  # why it was skipped; None: measured
    size_mb: float | None = None
    seconds: list[float] = field(default_factory=list)  # per timed run
    images_per_s: float | None = None
    speedup: float | None = None  # images/s over the fp32 eager model's
    peak_mb: float | None = None
    gflops: float | None = None  # achieved: FLOPs per batch / median seconds
    peak_share: float | None = None  # % of the machine's peak of ``peak_of``
    peak_of: str | None = None  # the precision whose matmul peak it is compared with
    miou: dict[str, float | None] = field(default_factory=dict)  # % per dataset spec
    miou_delta: dict[str, float | None] = field(default_factory=dict)  # minus the fp32 eager model's
    mean_miou: float | None = None

    @property
    def name(self) -> str:
        return f"{self.format} {self.precision}"


class Variant(nn.Module):
    """A variant's callable as evaluation takes it: normalised images [B, 3, H, W] -> logits [B, K, H, W],
    with the checkpoint's input ``normalization`` (a TorchScript module or an ONNX session carries none)."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], normalization, channels_last: bool):
        super().__init__()
        self.run, self.normalization, self.channels_last = run, normalization, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.run(x)


def default_out(checkpoint: str | Path) -> Path:
    """Beside the checkpoint: ``runs/x/best.pt`` -> ``runs/x/best.benchmark/`` (a folder or Hub id: in the
    working folder, as ``famix eval``'s results)."""
    base = pretrained.base_path(checkpoint)
    return base.with_name(f"{base.stem}.benchmark")


def is_benchmark_json(path: str | Path) -> bool:
    """Whether ``path`` is a ``benchmark.json`` that famix benchmark wrote."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("kind") == KIND


def _ours(path: Path) -> bool:
    # each file by its own mark: the JSON's kind, the table's first line, the PNG's Software text chunk
    if path.suffix == ".json":
        return is_benchmark_json(path)
    try:
        if path.suffix == ".md":
            with open(path, encoding="utf-8") as f:
                return f.readline().startswith(f"# {KIND}")
        with open(path, "rb") as f:
            return f.read(8) == b"\x89PNG\r\n\x1a\n" and f"{KIND}".encode() in f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False


def check_out(out: str | Path, force: bool) -> Path:
    """The output folder: missing, empty, or one famix benchmark wrote (its ``benchmark.json``); no file in
    it that famix benchmark did not write is replaced (``force``: replace them)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: pass a folder for the benchmark's files")
    check_folder(out, "--out")
    if out.is_dir() and any(out.iterdir()) and not is_benchmark_json(out / FILES["json"]) and not force:
        raise FileExistsError(
            f"--out {out} is a folder famix benchmark did not write (no {FILES['json']} of its own): pass a "
            "new or empty folder, or --force to write into it"
        )
    for name in FILES.values():
        check_replaceable(out / name, _ours, "a file written by `famix benchmark`", force)
    return out


def plan(settings: BenchmarkSettings, device: torch.device) -> list[Row]:
    """The rows to measure, fp32 eager first (every row is compared with it): each format in each precision
    asked for (ONNX files once, in their own precision); a bf16 row where the device has no native bf16 is
    skipped with the reason. Explicit bf16 on such a device is refused."""
    native = native_bf16(device)
    where = cpu_description() if device.type == "cpu" else str(device)
    if settings.precisions is not None and "bf16" in settings.precisions and not native:
        raise ValueError(
            f"--precisions bf16: {where} has no native bf16 (a CPU needs AMX or avx512_bf16); emulated bf16 "
            "would be measured slower than it is anywhere: pass --precisions fp32"
        )
    if settings.precisions is not None and "fp16" in settings.precisions and device.type != "cuda":
        raise ValueError(f"--precisions fp16: fp16 autocast is for CUDA, not {where}: pass fp32 or bf16")
    precisions = settings.precisions or ("fp32", "bf16", *(("fp16",) if device.type == "cuda" else ()))
    rows = [Row("eager", "fp32")]
    for fmt in settings.formats:
        for precision in [OWN_PRECISION[fmt]] if fmt in OWN_PRECISION else precisions:
            if (fmt, precision) == ("eager", "fp32"):
                continue
            row = Row(fmt, precision)
            if precision == "bf16" and not native:
                row.reason = f"{where} has no native bf16 (AMX or avx512_bf16)"
            rows.append(row)
    return rows


def even_indices(n: int, k: int | None) -> list[int]:
    """``k`` of ``range(n)`` spread evenly, the first of each of k equal parts (all: ``k`` None or >= n)."""
    if k is None or k >= n:
        return list(range(n))
    return [i * n // k for i in range(k)]


def _release_free_memory() -> None:
    # glibc keeps freed heap memory resident: give it back, so that what a variant allocates shows as growth
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class ResidentPeak:
    """The process's highest resident set (bytes) while the ``with`` block runs, above the one at its start
    (free heap memory returned to the system first). Linux keeps that high-water mark itself (``VmHWM``,
    reset by writing 5 to ``/proc/self/clear_refs``): nothing runs beside the timed code. Where it cannot be
    reset, a background thread samples ``/proc/self/statm`` every :data:`SAMPLE_SECONDS` instead (torch and
    ONNX Runtime release the GIL while they compute). ``peak`` is None where there is no ``/proc``;
    ``method`` says which measured it."""

    def __init__(self):
        self.peak: int | None = None
        self.method: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _resident(self) -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _high_water() -> int | None:
        try:
            with open("/proc/self/status") as f:
                line = next(line for line in f if line.startswith("VmHWM:"))
            return int(line.split()[1]) * 1024  # kB
        except (OSError, ValueError, StopIteration):
            return None

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._high = max(self._high, self._resident() or 0)

    def __enter__(self) -> ResidentPeak:
        _release_free_memory()
        self._base = self._resident()
        self._high = self._base or 0
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # the high-water mark := the resident set now
            self.method = "VmHWM"
        except OSError:
            self.method = "sampled" if self._base is not None else None
            if self.method:
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        elif self.method == "VmHWM":
            self._high = self._high_water() or self._high
        if self._base is not None:
            self.peak = max(self._high, self._resident() or 0) - self._base


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def time_variant(
    model: nn.Module, x: torch.Tensor, dtype, device: torch.device, warmup: int, repeats: int, in_torch: bool
) -> tuple[list[float], int | None]:
    """(seconds per timed run, peak bytes above the start of the runs, warm-up included: the resident set
    on a CPU (:class:`ResidentPeak`), torch's CUDA allocation on a GPU, None for an ONNX file on a GPU) of
    ``model(x)`` under autocast ``dtype``."""

    def once():
        with torch.inference_mode(), autocast(device, dtype):
            return model(x)

    if device.type == "cuda":
        _synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        seconds = _median_seconds(once, device, warmup, repeats)
        return seconds, (torch.cuda.max_memory_allocated(device) - base) if in_torch else None
    with ResidentPeak() as memory:
        seconds = _median_seconds(once, device, warmup, repeats)
    return seconds, memory.peak


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``model`` on ``x`` (matmuls and convolutions, as dispatched; fp32)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def _int8_matmul(n: int, threads: int | None) -> Callable[[], object]:
    # ONNX Runtime's uint8 x int8 MatMulInteger: the kernel family its quantised (QDQ) graphs run
    import numpy as np
    from onnx import TensorProto, helper

    ort = import_onnx_tools(runtime_only=True)
    g = np.random.default_rng(0)
    weight = helper.make_tensor(
        "B", TensorProto.INT8, [n, n], g.integers(-128, 128, (n, n), dtype=np.int8).tobytes(), raw=True
    )
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
        "peak",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])],
        initializer=[weight],
    )
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = g.integers(0, 256, (n, n), dtype=np.uint8)
    return lambda: session.run(None, {"A": a})


def machine_peaks(device: torch.device, precisions: set[str], threads: int | None) -> tuple[dict, list[str]]:
    """The device's achieved peak GFLOP/s per precision in ``precisions`` (fp32 always): the fastest of
    :data:`PEAK_REPEATS` n x n matmuls for each n of :data:`PEAK_SIZES` (fp32, bf16 and fp16 in torch; int8
    by ONNX Runtime's MatMulInteger on the CPU), after one untimed each, and notes on what stands in for a
    peak not measured. The fastest, not the median: a peak is what the machine can do, and a busy moment
    only slows a run down."""
    notes, peaks = [], {}
    g = torch.Generator().manual_seed(0)

    def best(make) -> float:  # GFLOP/s of the fastest matmul over the sizes
        return max(
            2 * n**3 / min(_median_seconds(fn, dev, 1, PEAK_REPEATS)) / 1e9
            for n in PEAK_SIZES
            for fn, dev in [make(n)]
        )

    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if name in precisions:

            def torch_matmul(n, dtype=dtype):
                a, b = (torch.randn(n, n, generator=g).to(device, dtype) for _ in range(2))
                return (lambda: a @ b), device

            peaks[name] = best(torch_matmul)
    if "int8" in precisions and device.type == "cpu":  # where ONNX Runtime's int8 kernels run
        try:
            peaks["int8"] = best(lambda n: (_int8_matmul(n, threads), torch.device("cpu")))
        except Exception as e:  # no onnx / onnxruntime, or ONNX Runtime's own error types
            notes.append(f"int8 rows: % of the fp32 peak (no int8 peak measured: {_one_line(e)})")
    elif "int8" in precisions:
        notes.append(f"int8 rows: % of the fp32 peak (no int8 peak measured on {device})")
    return peaks, notes


def _export(model, cfg, ckpt, fmt: str, folder: Path, s: BenchmarkSettings) -> Path:
    # famix export's own export and check, into the temporary folder; onnx-int8 calibrated as famix export's
    int8 = fmt == "onnx-int8"
    es = ExportSettings(
        format="onnx" if int8 else fmt,
        size=s.size,
        dynamic=True,
        int8=int8,
        **(
            {"calibrate": s.calibrate, "calibration_images": s.calibration_images,
             "calibration_data": s.calibration_data, "bank": s.bank} if int8 else {}
        ),
    )  # fmt: skip
    out = folder / f"model-{fmt}{'.onnx' if es.format == 'onnx' else '.pt'}"
    calibration = export_stage.calibration_set(ckpt, es, model) if int8 else None
    export_stage.export_model(model, cfg, out, es, calibration=calibration)
    if int8 and not _is_int8(out):
        raise NotImplementedError("famix export wrote no int8 graph (no quantised operator in the file)")
    return out


def _is_int8(path: Path) -> bool:
    import onnx

    return any(node.op_type in INT8_OPS for node in onnx.load(str(path)).graph.node)


def _one_line(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text[:300]


def _miou(
    model: Variant, datasets: dict, s: BenchmarkSettings, num_classes: int, device, dtype
) -> dict[str, float | None]:
    out = {}
    for spec, dataset in datasets.items():
        loader = DataLoader(
            Subset(dataset, even_indices(len(dataset), s.images)),
            batch_size=s.batch,
            collate_fn=collate_by_size,
        )
        result = evaluate(model, loader, num_classes, device, amp_dtype=dtype, progress=False, reduce=False)
        out[spec] = None if math.isnan(result.miou) else result.miou
    return out


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.mean(kept) if kept else None


def run(
    checkpoint: str | Path,
    specs: list[str],
    settings: BenchmarkSettings | None = None,
    out: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    say=print,
) -> dict:
    """Benchmark ``checkpoint`` (a checkpoint, a ``famix save`` folder or a Hub id) on dataset ``specs`` as
    ``settings`` say; write the table, JSON and picture into ``out`` (default :func:`default_out`) and
    return the JSON's content. Every input is checked before the first variant is measured."""
    s = settings or BenchmarkSettings()
    single_process("famix benchmark", "every rank would time the same variants on one machine")
    if not specs:
        raise ValueError("give at least one dataset spec to measure mIoU on (--data SPEC[,SPEC ...])")
    device = resolve_device(s.device)
    rows = plan(s, device)
    ckpt = load_checkpoint(checkpoint)
    cfg = model_config(ckpt)
    labels = checkpoint_label_set(cfg, None, checkpoint)
    datasets = check_specs(specs, "--data", labels)
    out = check_out(out if out is not None else default_out(checkpoint), force)
    model, cfg = load_segmenter(ckpt, device="cpu")
    if any(r.format not in ("eager", "compiled") for r in rows):  # the exports' size rule
        export_stage.check_size(s.size, model.output_stride, dynamic=True)
    if "onnx-int8" in s.formats:  # calibration inputs the user named: checked before any timing
        if s.calibration_data:
            check_specs([s.calibration_data], "--calibration-data", labels)
        if s.bank and not Path(s.bank).is_file():
            raise FileNotFoundError(f"--bank {s.bank} not found: pass the run's style bank (famix mine)")

    threads_before = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        report = {
            "model": _shown(checkpoint),
            **_measure(ckpt, model, cfg, labels, datasets, rows, s, device, progress, say),
        }
    finally:
        torch.set_num_threads(threads_before)
    write_files(report, out, say)
    return report


def _shown(checkpoint) -> str:
    """The model as the files name it: a Hub id as it is, a path by its last parts (no user's folders)."""
    text = str(checkpoint)
    return text if text.startswith("hf:") else str(Path(*Path(text).parts[-2:]))


@dataclass
class Bench:
    """What every row is measured with: the timed input ``x`` [B, 3, H, W], FLOPs per batch, the machine's
    peaks, the datasets, the exported files (or why one is missing) and the callables made so far."""

    s: BenchmarkSettings
    device: torch.device
    x: torch.Tensor
    flops: int
    peaks: dict[str, float]
    datasets: dict
    num_classes: int
    normalization: tuple
    channels_last: bool  # eager and compiled run NHWC (the tower's own choice)
    weights_mb: float
    files: dict[str, Path | Exception]
    made: dict[str, Callable]


def _measure(ckpt, model, cfg, labels, datasets, rows: list[Row], s, device, progress, say) -> dict:
    h, w = s.size
    x = normalize(torch.rand((s.batch, 3, h, w), generator=torch.Generator().manual_seed(0)))  # [B, 3, H, W]
    flops = count_flops(model, x)
    peaks, notes = machine_peaks(
        device, {"fp32"} | {r.precision for r in rows if r.reason is None}, s.threads
    )
    bar = progress_bar(total=len(rows), desc="famix benchmark", disable=not progress)
    with tempfile.TemporaryDirectory(prefix="famix-benchmark-") as tmp:
        files = {}
        for fmt in dict.fromkeys(r.format for r in rows if r.format not in ("eager", "compiled")):
            bar.set_postfix_str(f"exporting {fmt}")  # before the eager model goes NHWC and to the device
            try:
                files[fmt] = _export(model, cfg, ckpt, fmt, Path(tmp), s)
            except (NotImplementedError, ValueError, ImportError) as e:
                files[fmt] = e
        channels_last = tower(model.backbone).channels_last
        weights_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
        eager = model.to(
            device, memory_format=torch.channels_last if channels_last else torch.preserve_format
        )
        bench = Bench(
            s, device, x.to(device), flops, peaks, datasets, len(labels), model.normalization, channels_last,
            weights_mb, files, {"eager": eager},
        )  # fmt: skip
        for row in rows:
            bar.set_postfix_str(row.name)
            if row.reason is None:
                _measure_row(row, bench)
            _compare(row, rows[0])
            with bar.external_write_mode():
                say(_line(row))
            bar.update()
        bar.close()
    if channels_last:
        notes.append("eager and compiled run channels_last (NHWC), the image tower's own layout")
    uneven = [r.name for r in rows if r.seconds and max(r.seconds) > UNEVEN * min(r.seconds)]
    if uneven:
        notes.append(
            f"timed runs differ by more than {UNEVEN:g}x for {', '.join(uneven)}: was the machine busy? "
            "(benchmark.json has every run's seconds)"
        )
    return _report(rows, s, device, flops, peaks, notes, datasets, cfg)


def _measure_row(row: Row, b: Bench) -> None:
    """Time ``row``'s variant and measure its mIoU (or say why it is skipped: its export failed, or
    torch.compile did)."""
    fmt = row.format
    file = b.files.get(fmt)
    if isinstance(file, Exception):
        row.reason = _one_line(file)
        return
    row.size_mb = b.weights_mb if file is None else file.stat().st_size / 1e6
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(row.precision)
    try:
        if fmt not in b.made:
            b.made[fmt] = torch.compile(b.made["eager"]) if fmt == "compiled" else _load(fmt, file, b)
        variant = Variant(b.made[fmt], b.normalization, b.channels_last and fmt in ("eager", "compiled"))
        _time_row(row, variant, dtype, b)
        row.miou = _miou(variant, b.datasets, b.s, b.num_classes, b.device, dtype)
    except Exception as e:  # torch.compile fails in many ways: no C++ compiler, an op it cannot trace, ...
        if fmt != "compiled":
            raise
        row.reason = f"torch.compile failed: {type(e).__name__}: {_one_line(e)}"


def _load(fmt: str, path: Path, b: Bench):
    if fmt in OWN_PRECISION:
        return OnnxSegmenter(path, b.device, threads=b.s.threads)
    return load_exported(path, fmt, b.device)


def _time_row(row: Row, variant: Variant, dtype, b: Bench) -> None:
    # torch.compile compiles on a first call (again under autocast): one untimed call, whatever --warmup says
    warmup = max(b.s.warmup, 1) if row.format == "compiled" else b.s.warmup
    seconds, peak = time_variant(
        variant, b.x, dtype, b.device, warmup, b.s.repeats, in_torch=row.format in TORCH_FORMATS
    )
    median = statistics.median(seconds)
    row.seconds = seconds
    row.images_per_s = b.s.batch / median
    row.peak_mb = None if peak is None else peak / 1e6
    row.gflops = b.flops / median / 1e9
    row.peak_of = row.precision if row.precision in b.peaks else "fp32"
    row.peak_share = 100 * row.gflops / b.peaks[row.peak_of]


def _compare(row: Row, base: Row) -> None:
    if row.reason is not None:
        return
    row.speedup = base.images_per_s and row.images_per_s / base.images_per_s
    row.miou_delta = {
        spec: None if v is None or base.miou.get(spec) is None else v - base.miou[spec]
        for spec, v in row.miou.items()
    }
    row.mean_miou = _mean(row.miou.values())


def _line(row: Row) -> str:
    if row.reason is not None:
        return f"{row.name}: skipped: {row.reason}"
    mious = ", ".join(f"{spec} {_num(v)}" for spec, v in row.miou.items())
    return (
        f"{row.name}: {row.images_per_s:.2f} images/s (x{row.speedup:.2f}), {_num(row.gflops, 1)} GFLOP/s "
        f"({_num(row.peak_share, 1)} % of {row.peak_of} peak), peak {_num(row.peak_mb, 1)} MB, "
        f"{row.size_mb:.1f} MB; mIoU {mious}"
    )


def _num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _versions() -> dict:
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    return {
        "torch": torch.__version__,
        "onnxruntime": ort,
        "famix": __version__,
        "python": platform.python_version(),
    }


def _report(rows, s: BenchmarkSettings, device, flops, peaks, notes, datasets, cfg) -> dict:
    measured = [r for r in rows if r.reason is None]
    return {
        "kind": KIND,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "backbone": cfg.backbone,
        "machine": {
            "device": str(device),
            "name": cpu_description() if device.type == "cpu" else torch.cuda.get_device_name(device),
            "cpu": cpu_description(),
            "torch_threads": s.threads or torch.get_num_threads(),
            "onnxruntime_threads": s.threads or "default",
            **_versions(),
        },
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(s).items()},
        "flops_per_batch": flops,
        "peak_gflops": peaks,
        "datasets": {
            spec: {"images": len(even_indices(len(d), s.images)), "of": len(d)}
            for spec, d in datasets.items()
        },
        "memory": MEMORY_NOTE["cuda" if device.type == "cuda" else "cpu"],
        "notes": notes,
        "variants": [{"name": r.name, **asdict(r)} for r in rows],
        "plot": [
            {"label": r.name, "images_per_s": r.images_per_s, "mean_miou": r.mean_miou} for r in measured
        ],
    }


def format_table(report: dict) -> str:
    """The markdown table of a benchmark's JSON: a header, one row per variant, the skipped ones' reasons."""
    m, st = report["machine"], report["settings"]
    specs = list(report["datasets"])
    h, w = st["size"]
    lines = [
        f"# {KIND}: {report['model']} ({report['backbone']})",
        "",
        f"- machine: {m['name']}; torch threads {m['torch_threads']}, ONNX Runtime threads "
        f"{m['onnxruntime_threads']}",
        f"- torch {m['torch']}, onnxruntime {m['onnxruntime'] or 'not installed'}, famix {m['famix']}",
        f"- input {h}x{w}, batch {st['batch']}: {st['warmup']} untimed run(s), then the median of "
        f"{st['repeats']} timed; {report['flops_per_batch'] / 1e9:.2f} GFLOP per batch (eager fp32)",
        f"- machine peak (the fastest of {PEAK_REPEATS} n x n matmuls, n in "
        f"{', '.join(map(str, PEAK_SIZES))}): "
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in report["peak_gflops"].items()),
        "- mIoU (%) on "
        + ", ".join(f"{spec} ({d['images']} of {d['of']} images)" for spec, d in report["datasets"].items())
        + "; in parentheses: the difference to eager fp32",
        f"- {report['memory']}",
        f"- date: {report['date']}",
        *(f"- {note}" for note in report["notes"]),
        "",
    ]
    head = ["variant", "precision", "size MB", "images/s", "speed-up", "peak MB", "GFLOP/s", "% of peak"]
    lines += ["| " + " | ".join(head + [f"mIoU {spec}" for spec in specs]) + " |"]
    lines += ["|" + "---|" * (len(head) + len(specs))]
    for v in report["variants"]:
        if v["reason"] is not None:
            cells = [v["format"], v["precision"], *["-"] * (len(head) - 2 + len(specs))]
        else:
            cells = [
                v["format"], v["precision"], _num(v["size_mb"], 1), _num(v["images_per_s"]),
                f"{v['speedup']:.2f}", _num(v["peak_mb"], 1), _num(v["gflops"], 1), _num(v["peak_share"], 1),
                *(f"{_num(v['miou'][spec])} ({_delta(v['miou_delta'][spec])})" for spec in specs),
            ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    skipped = [v for v in report["variants"] if v["reason"] is not None]
    if skipped:
        lines += ["", "Skipped:", *(f"- {v['name']}: {v['reason']}" for v in skipped)]
    return "\n".join(lines) + "\n"


def _delta(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f}"


def draw(report: dict, path: Path) -> None:
    """``benchmark.png``: images/s against mean mIoU, one labelled point per measured variant (labels of
    points that (nearly) coincide stacked, not overprinted). Drawn by matplotlib's Agg canvas, no pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    st, points = report["settings"], report["plot"]
    xs = [p["images_per_s"] for p in points]
    ys = [math.nan if p["mean_miou"] is None else p["mean_miou"] for p in points]
    fig = Figure(figsize=(8, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    near_x = 0.04 * ((max(xs) - min(xs)) or 1.0)
    known = [y for y in ys if not math.isnan(y)]
    near_y = 0.04 * (((max(known) - min(known)) if known else 0.0) or 1.0)
    for i, (p, x, y) in enumerate(zip(points, xs, ys, strict=True)):
        stacked = sum(abs(x - xs[j]) < near_x and abs(y - ys[j]) < near_y for j in range(i))
        ax.scatter([x], [y], s=40)
        ax.annotate(p["label"], (x, y), textcoords="offset points", xytext=(6, 4 + 12 * stacked), fontsize=9)
    ax.set_xlabel(f"throughput (images/s; batch {st['batch']} at {st['size'][0]}x{st['size'][1]})")
    ax.set_ylabel(f"mean mIoU over {len(report['datasets'])} held-out dataset(s) (%)")
    ax.set_title(
        f"famix benchmark of {Path(report['model']).name} ({report['backbone']})\n"
        f"on {report['machine']['name']}",
        fontsize=10,
    )
    ax.margins(x=0.12, y=0.2)  # room for the labels above and right of the points
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(
        path, lambda tmp: fig.savefig(tmp, format="png", metadata={"Software": f"{KIND} {__version__}"})
    )


def write_files(report: dict, out: Path, say=print) -> list[Path]:
    """Write ``benchmark.json``, ``benchmark.md`` and (with matplotlib) ``benchmark.png`` into ``out``, each
    atomically; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [
        atomic_write(out / FILES["json"], lambda tmp: tmp.write_text(json.dumps(report, indent=1) + "\n")),
        atomic_write(out / FILES["table"], lambda tmp: tmp.write_text(format_table(report))),
    ]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        say(f"{FILES['picture']} not drawn: it needs matplotlib ({PLOT_HINT})")
    else:
        draw(report, out / FILES["picture"])
        written.append(out / FILES["picture"])
    say(f"famix benchmark: {', '.join(p.name for p in written)} in {out}")
    return written
