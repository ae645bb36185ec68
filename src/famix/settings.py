"""The typed settings of the verbs that take options rather than a config file (evaluate, predict, export,
adapt) and the test-time settings they share: one value each, built once by the CLI or the Python API and
passed whole to the stage. Torch-free, so that the command-line parser reads their choices and defaults
without importing torch (``famix --help``)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

from famix.paper import (
    PIN_LR,
    PIN_STEPS,
    PIN_WEIGHT_DECAY,
    PODA_HEAD_LR,
    PODA_ITERATIONS,
    RECIPES,
)

MAX_SCALE = 8.0  # larger test-time scales are typos (8x a 2048x1024 image is 134 Mpx)
# run.amp / --amp: the autocast dtype. auto: bf16 where the device computes it natively (CUDA; a CPU with
# AMX or avx512_bf16), else fp32 (off); bf16 on a CPU without it is refused; fp16 is for CUDA.
AMP_CHOICES = ("auto", "bf16", "fp16", "off")


@dataclass(frozen=True)
class InferenceSettings:
    """How logits are computed at test time.

    ``scale`` s resizes the input (0.5 = half resolution; None = as is), ``ensemble`` averages the logits
    at scale 1 and s (the paper's two-scale case of ``scales``), ``scales`` averages over several input
    scales, ``flip`` adds each input flipped left-right (its logits flipped back), ``window`` segments each
    (scaled) input in overlapping ``window``-pixel tiles ``stride`` apart (default 2/3 of the window).
    ``fit`` = (W, H) first resizes the input to fit that box, keeping its aspect ratio, as
    mmsegmentation's ``Resize(scale=(W, H), keep_ratio=True)`` (``--protocol mmseg``). Logits are resized
    to the label's (the input's) size before they are averaged; the average is in float32.
    """

    scale: float | None = None
    ensemble: bool = False
    window: int | None = None
    stride: int | None = None
    flip: bool = False
    scales: tuple[float, ...] | None = None
    fit: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.scale is not None and not 0 < self.scale <= MAX_SCALE:
            raise ValueError(f"--scale must be a factor in (0, {MAX_SCALE:g}], got {self.scale}")
        if self.scales is not None:
            object.__setattr__(self, "scales", tuple(float(v) for v in self.scales))
            bad = [v for v in self.scales if not 0 < v <= MAX_SCALE]
            if not self.scales or bad:
                raise ValueError(
                    f"--scales must be factors in (0, {MAX_SCALE:g}], e.g. --scales 0.75 1 1.25; got "
                    f"{' '.join(f'{v:g}' for v in self.scales) or 'none'}"
                )
            if self.scale is not None or self.ensemble:
                raise ValueError(
                    "--scales replaces --scale/--ensemble: give the scales once, e.g. --scales 1 0.5"
                )
        if self.ensemble and self.scale is None:
            raise ValueError("--ensemble averages scale 1 and --scale: give --scale too (or use --scales)")
        if self.window is not None and self.window < 1:
            raise ValueError(f"--window must be a positive number of pixels, got {self.window}")
        if self.stride is not None and (self.window is None or not 1 <= self.stride <= self.window):
            # A stride longer than the window would leave unpredicted gaps between tiles.
            raise ValueError(f"--stride must be in [1, --window] and needs --window, got {self.stride}")
        if self.fit is not None and (len(self.fit) != 2 or min(self.fit) < 1):
            raise ValueError(f"fit must be a (width, height) box of positive sizes, got {self.fit}")

    def factors(self) -> list[float]:
        """The input scales whose logits are averaged (before ``fit``'s resize factor)."""
        if self.scales is not None:
            return list(self.scales)
        s = 1.0 if self.scale is None else float(self.scale)
        return [1.0, s] if self.ensemble and s != 1.0 else [s]

    def input_size(self, h: int, w: int, s: float) -> tuple[int, int]:
        """The size the model sees for an (h, w) input at scale ``s``: ``fit``'s box first (mmseg's rule:
        factor min(long side / long edge, short side / short edge), sizes int(x * f + 0.5)), then ``s``."""
        if self.fit is not None:
            f = min(max(self.fit) / max(h, w), min(self.fit) / min(h, w))
            h, w = int(h * f + 0.5), int(w * f + 0.5)
        return max(1, round(h * s)), max(1, round(w * s))

    def record(self) -> dict:
        """The settings as a run record: the fields added later (flip, scales, fit) only when set, so the
        records (and cached results) of earlier famix versions still match."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if k not in ("flip", "scales", "fit") or v not in (False, None)}

    def describe(self) -> str:
        """A short name for file names: "" for the plain setting, else e.g. "s0.5e-w1024", "ms0.75,1-f"."""
        parts = []
        if self.fit is not None:
            parts.append(f"fit{self.fit[0]}x{self.fit[1]}")
        if self.scales is not None:
            parts.append("ms" + ",".join(f"{v:g}" for v in self.scales))
        elif self.scale not in (None, 1.0):
            parts.append(f"s{self.scale:g}" + ("e" if self.ensemble else ""))
        if self.window is not None:
            parts.append(f"w{self.window}" + (f"s{self.stride}" if self.stride else ""))
        if self.flip:
            parts.append("f")
        return "-".join(parts)


PLAIN = InferenceSettings()  # the model on the image as it is


@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate. ``tta``, the autocast and the label sets decide the result; device, batch size,
    workers do not. ``classes``: the label set (file or shipped name) the checkpoint must have (a
    checkpoint that stores none, e.g. an official one, takes its ids and colours when the names agree);
    ``group``: a label set whose ``ids`` are the checkpoint's class indices, to report merged classes.
    ``protocol``: ``paper`` or ``mmseg`` (:mod:`famix.engine.protocols`); ``amp`` None: the checkpoint's.

    ``condition``: evaluate on the images restyled toward these words ("heavy snow"): each image's style map
    takes the statistics image-level PIN mines for it (``condition_steps`` SGD steps at ``condition_lr``,
    famix's batch-independent recipe), labels unchanged; CLIP: ``condition_weights``, else the checkpoint's
    (docs/conditions.md). 0 steps: each image keeps its own statistics, the plain evaluation."""

    tta: InferenceSettings = field(default=PLAIN)
    amp: str | None = None  # None: the checkpoint's run.amp (one precision per checkpoint)
    device: str = "auto"
    batch_size: int = 4
    workers: int = 0
    classes: str | None = None
    group: str | None = None
    protocol: str = "paper"  # engine.protocols: the test-time settings per dataset
    condition: str | None = None  # None: the images as they are
    condition_steps: int = PIN_STEPS
    condition_lr: float = PIN_LR  # per image (the loss summed over images: a style never sees the batch)
    condition_weights: str | None = None  # CLIP weights (None: the checkpoint's, as famix diagnose)

    def __post_init__(self) -> None:
        if self.condition is not None:
            check_condition(self.condition)
        if self.condition_steps < 0:
            raise ValueError(f"--condition-steps {self.condition_steps}: give a number of PIN steps >= 0")
        if not 0 < self.condition_lr < math.inf:  # nan and inf fail too
            raise ValueError(f"--condition-lr {self.condition_lr}: give a finite number > 0")


def check_condition(text: str) -> str:
    """``text`` if it names a condition in words (a letter or digit), else a ValueError: what to give."""
    if not any(c.isalnum() for c in text):
        raise ValueError(
            f'--condition {text!r} names no condition: describe it in words, e.g. --condition "heavy snow"'
        )
    return text


# famix predict's outputs: image kinds (labelid: Cityscapes labelIds, 19-class models only) and video kinds
OUTPUT_KINDS = ("trainid", "color", "overlay", "labelid")
DEFAULT_OUTPUTS = ("trainid", "color", "overlay")
VIDEO_OUTPUTS = ("overlay", "color")


@dataclass(frozen=True)
class PredictSettings:
    """How ``famix predict`` segments and what it writes. ``tta`` and the autocast decide the predictions
    (``amp`` None: the checkpoint's run.amp); ``outputs``: the image files per input (:data:`OUTPUT_KINDS`),
    ``video_output``: a video's kind (:data:`VIDEO_OUTPUTS`), ``server``: a test server's submission layout
    instead (cityscapes, acdc; one file per image); ``legend``: a strip naming the classes shown below
    colour and overlay pictures and videos; device and batch size (images of one size, or video frames,
    per batch) change only the speed."""

    tta: InferenceSettings = field(default=PLAIN)
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    video_output: str = "overlay"
    server: str | None = None
    legend: bool = True
    amp: str | None = None
    device: str = "auto"
    batch_size: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "outputs", tuple(self.outputs))
        unknown = sorted(set(self.outputs) - set(OUTPUT_KINDS))
        if unknown:
            raise ValueError(f"unknown outputs {unknown}; choose from {OUTPUT_KINDS}")
        if self.video_output not in VIDEO_OUTPUTS:
            raise ValueError(f"unknown video_output {self.video_output!r}; choose from {VIDEO_OUTPUTS}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


# Export format name -> file name ending (the default output is the checkpoint's stem + this).
FORMATS = {"onnx": ".onnx", "exported-program": ".pt2", "torchscript": ".torchscript.pt"}
# The check an export must pass to be written: float32 reorderings give ~1e-7 relative differences;
# 1e-3 on the logits is far above that and far below what changes a decision.
ATOL = 1e-3
MIN_AGREEMENT = 99.9  # % of pixels whose argmax (class) equals the eager model's


def parse_size(text: str) -> tuple[int, int]:
    """``"512x1024"`` -> (512, 1024); a single number is a square."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not m:
        raise ValueError(f"--size must be HEIGHTxWIDTH in pixels, e.g. 512x1024, got {text!r}")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


# What an export's graph takes and returns. logits: normalised float32 images [B, 3, H, W] -> logits
# [B, K, H, W] (SegmentationNetwork.forward); ids: uint8 RGB images [B, H, W, 3] -> class ids uint8 [B, H, W]
# (normalisation and argmax inside the graph: a deployed model needs no famix code around it).
GRAPHS = ("logits", "ids")
# int8 calibration data: source images as they are, or restyled at the style site by the mined style bank.
CALIBRATIONS = ("source", "styles")
INT8_MIN_AGREEMENT = 90.0  # % of held-back source pixels an int8 file must classify as the fp32 model does


@dataclass(frozen=True)
class ExportSettings:
    """What ``famix export`` writes: ``format`` (:data:`FORMATS`) at ``size`` (H, W; ``"HxW"`` is parsed),
    any batch and size with ``dynamic``, the ``graph`` of :data:`GRAPHS`; written only if the export's logits
    are within ``atol`` of the eager model's and ``min_agreement`` % of pixels share its argmax; ``force``:
    replace a file famix did not export.

    ``int8`` (ONNX only): static quantisation by ONNX Runtime (QDQ, per-channel int8 weights, uint8
    activations), calibrated on ``calibration_images`` images of ``calibration_data`` (a dataset spec;
    None: the checkpoint's training data), ``calibrate`` ``source`` (as they are) or ``styles`` (restyled at
    the style site by ``bank``, None: the checkpoint's mined style bank). An int8 file is checked on other
    source images: at least ``min_agreement`` % of pixels (default :data:`INT8_MIN_AGREEMENT`) as the fp32
    model; its logits are not compared.
    """

    format: str
    size: tuple[int, int]
    dynamic: bool = False
    atol: float = ATOL
    min_agreement: float | None = None  # None: MIN_AGREEMENT, or INT8_MIN_AGREEMENT with int8
    force: bool = False
    graph: str = "logits"
    int8: bool = False
    calibrate: str = "source"
    calibration_images: int = 32
    calibration_data: str | None = None
    bank: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown export format {self.format!r}; choose from {', '.join(FORMATS)}")
        if isinstance(self.size, str):
            object.__setattr__(self, "size", parse_size(self.size))
        else:
            object.__setattr__(self, "size", tuple(self.size))
        if self.graph not in GRAPHS:
            raise ValueError(f"--graph {self.graph!r}: choose one of {', '.join(GRAPHS)}")
        if self.calibrate not in CALIBRATIONS:
            raise ValueError(f"--calibrate {self.calibrate!r}: choose one of {', '.join(CALIBRATIONS)}")
        if self.int8 and self.format != "onnx":
            raise ValueError(f"--int8 is for --format onnx (ONNX Runtime's quantisation), not {self.format}")
        if self.calibration_images < 1:
            raise ValueError(f"--calibration-images {self.calibration_images}: give a number >= 1")
        if not self.int8 and (self.calibration_data or self.bank or self.calibrate != "source"):
            raise ValueError("--calibrate, --calibration-data and --bank choose int8 calibration: add --int8")
        if self.min_agreement is None:
            object.__setattr__(self, "min_agreement", INT8_MIN_AGREEMENT if self.int8 else MIN_AGREEMENT)

    def record(self) -> dict:
        """The settings that decide the exported file (its run record's)."""
        out = {
            "format": self.format,
            "size": list(self.size),
            "dynamic": self.dynamic,
            "atol": self.atol,
            "min_agreement": self.min_agreement,
        }
        if self.graph != "logits":  # records of earlier exports stay as they were
            out["graph"] = self.graph
        if self.int8:
            out["int8"] = {
                "calibrate": self.calibrate,
                "images": self.calibration_images,
                "data": self.calibration_data,
            }
        return out


# famix benchmark's variants: formats (eager: the checkpoint's model in torch; compiled: torch.compile of
# it; onnx-int8: ExportSettings(int8=True)) and precisions (bf16: autocast, where the device has it natively)
BENCHMARK_FORMATS = ("eager", "compiled", "torchscript", "onnx", "onnx-int8")
BENCHMARK_PRECISIONS = ("fp32", "bf16", "fp16")  # fp16: CUDA only


@dataclass(frozen=True)
class BenchmarkSettings:
    """What ``famix benchmark`` measures: every ``formats`` x ``precisions`` variant (bf16 only for torch
    formats; ONNX files run in their own precision) at ``size`` (H, W) and ``batch``: ``warmup`` untimed
    runs, then the median of ``repeats``; mIoU per dataset on ``images`` images of each (None: all, else
    that many spread evenly) at their own size. ``precisions`` None: fp32, and bf16 where the device has
    it natively (bf16 asked for on a device without it is refused). ``threads``: torch and ONNX Runtime
    CPU threads (None: their own choice). ``calibrate``, ``calibration_images``, ``calibration_data``,
    ``bank``: onnx-int8's export (as ``famix export --int8``)."""

    formats: tuple[str, ...] = BENCHMARK_FORMATS
    precisions: tuple[str, ...] | None = None
    size: tuple[int, int] = (512, 1024)
    batch: int = 1
    warmup: int = 2
    repeats: int = 5
    images: int | None = None
    threads: int | None = None
    calibrate: str = "source"
    calibration_images: int = 32
    calibration_data: str | None = None  # onnx-int8: a dataset spec (None: the checkpoint's data.train)
    bank: str | None = None  # onnx-int8 with calibrate=styles: the style bank (None: the checkpoint's)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.size, str | int):
            object.__setattr__(self, "size", parse_size(str(self.size)))
        else:
            object.__setattr__(self, "size", tuple(self.size))
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"--size {self.size}: give HEIGHTxWIDTH in pixels, e.g. 512x1024")
        for name, given, known in (
            ("formats", self.formats, BENCHMARK_FORMATS),
            ("precisions", self.precisions, BENCHMARK_PRECISIONS),
        ):
            if given is None and name == "precisions":
                continue
            given = (given,) if isinstance(given, str) else tuple(dict.fromkeys(given or ()))
            object.__setattr__(self, name, given)
            unknown = [v for v in given if v not in known]
            if unknown or not given:
                raise ValueError(f"--{name} {' '.join(unknown) or '(none)'}: choose from {', '.join(known)}")
        if self.calibrate not in CALIBRATIONS:
            raise ValueError(f"--calibrate {self.calibrate!r}: choose one of {', '.join(CALIBRATIONS)}")
        for name in ("batch", "repeats", "calibration_images", "images", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} {value}: give a number >= 1")
        if self.warmup < 0:
            raise ValueError(f"--warmup {self.warmup}: give a number >= 0")


@dataclass(frozen=True)
class AdaptSettings:
    """What an adaptation computes, besides the target and the checkpoint (None: the checkpoint's value).

    iterations: head fine-tuning steps; lr: the head's SGD lr (poly schedule); steps, pin_lr:
    image-level PIN (``famix.style.image_pin``); images: source crops mined (None: the whole source set, as
    PODA); crop, batch_size: source crops (None: the checkpoint's data.crop / data.batch_size).
    """

    recipe: str = "poda"  # poda: the official PIN_aug.py + main.py; famix: ours (batch-independent PIN)
    iterations: int = PODA_ITERATIONS
    lr: float = PODA_HEAD_LR
    steps: int = PIN_STEPS
    pin_lr: float | None = None  # None: the recipe's (poda 1 on the batch-mean loss, famix 0.1 per image)
    pin_batch: int | None = None  # poda: images per PIN batch (None: 16); famix: the fine-tuning batch
    weight_decay: float = PIN_WEIGHT_DECAY  # of the PIN SGD
    images: int | None = None
    crop: int | None = None
    batch_size: int | None = None
    seed: int = 0
    amp: str | None = None  # fine-tuning autocast (None: poda off = fp32, famix auto); PIN is fp32
    # what does not change the result: where and how often
    device: str = "auto"
    workers: int = 0
    ckpt_interval: int = 100  # a stop by a signal saves anyway; a kill -9 loses at most this many steps
    save_every: int = 10  # mining: batches between saves of the partial bank

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"famix adapt --recipe={self.recipe!r}: choose one of {', '.join(RECIPES)}")
        names = (
            "iterations",
            "ckpt_interval",
            "steps",
            "save_every",
            "images",
            "crop",
            "batch_size",
            "pin_batch",
        )
        for name in names:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"famix adapt --{name.replace('_', '-')}={value}: give a number >= 1")
        if not 0 <= self.weight_decay < math.inf:  # nan and inf fail too
            raise ValueError(f"famix adapt --weight-decay={self.weight_decay}: give a finite number >= 0")
        for name in ("lr", "pin_lr"):
            if getattr(self, name) is not None and not 0 < getattr(self, name) < math.inf:
                raise ValueError(
                    f"famix adapt --{name.replace('_', '-')}={getattr(self, name)}: give a finite number > 0"
                )
        if self.amp not in (None, *AMP_CHOICES):
            raise ValueError(f"famix adapt --amp={self.amp!r}: choose {', '.join(AMP_CHOICES)}")


@dataclass(frozen=True)
class AppSettings:
    """``famix app``: where the page is served and what it may do.

    host, port: the address (127.0.0.1: this machine only; a free port from 7860 when None); weights: the
    CLIP weights of the conditions box and of adaptation (None: those the checkpoint's config names, or the
    package's for its tiny CLIPs); data: the source images adaptation restyles (None: the checkpoint's
    ``data.train`` where it can be read here, else the adapt button says what to pass); out: the folder the
    adapted models go to; adapt: the adaptation's settings (``famix adapt``'s)."""

    host: str = "127.0.0.1"
    port: int | None = None
    weights: str | None = None
    data: str | None = None
    out: str = "famix-app"
    device: str = "auto"
    adapt: AdaptSettings = field(default_factory=AdaptSettings)

    def __post_init__(self) -> None:
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"--port {self.port}: give a port number in 1..65535")
        if not self.host:
            raise ValueError("--host: give an address to listen on (127.0.0.1: this machine only)")
