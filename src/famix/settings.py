"""The typed settings of the verbs that take options rather than a config file (export, adapt): one value
each, built once by the CLI or the Python API and passed whole to the stage. Torch-free, so that the
command-line parser reads their choices and defaults without importing torch (``famix --help``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from famix.paper import (
    PIN_STEPS,
    PIN_WEIGHT_DECAY,
    PODA_HEAD_LR,
    PODA_ITERATIONS,
    RECIPES,
)

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


@dataclass(frozen=True)
class ExportSettings:
    """What ``famix export`` writes: ``format`` (:data:`FORMATS`) at ``size`` (H, W; ``"HxW"`` is parsed),
    any batch and size with ``dynamic``; written only if the export's logits are within ``atol`` of the eager
    model's and ``min_agreement`` % of pixels share its argmax; ``force``: replace a file famix did not
    export."""

    format: str
    size: tuple[int, int]
    dynamic: bool = False
    atol: float = ATOL
    min_agreement: float = MIN_AGREEMENT
    force: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown export format {self.format!r}; choose from {', '.join(FORMATS)}")
        if isinstance(self.size, str):
            object.__setattr__(self, "size", parse_size(self.size))
        else:
            object.__setattr__(self, "size", tuple(self.size))

    def record(self) -> dict:
        """The settings that decide the exported file (its run record's)."""
        return {
            "format": self.format,
            "size": list(self.size),
            "dynamic": self.dynamic,
            "atol": self.atol,
            "min_agreement": self.min_agreement,
        }


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
    amp: str | None = None  # fine-tuning autocast on CUDA (None: poda off = fp32, famix bf16); PIN is fp32
    # what does not change the result: where and how often
    device: str = "auto"
    workers: int = 0
    ckpt_interval: int = 500
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
        if self.weight_decay < 0:
            raise ValueError(f"famix adapt --weight-decay={self.weight_decay}: give a number >= 0")
        for name in ("lr", "pin_lr"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(
                    f"famix adapt --{name.replace('_', '-')}={getattr(self, name)}: give a number > 0"
                )
        if self.amp not in (None, "bf16", "fp16", "off"):
            raise ValueError(f"famix adapt --amp={self.amp!r}: choose bf16, fp16 or off")
