"""Inference: logits of a segmenter at test time (input scale, scale ensemble, sliding window), in eval
mode and under autocast. Evaluation, prediction, video and the demo all come through here.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from famix.data.transforms import normalize
from famix.engine.amp import autocast
from famix.normalization import OPENAI_NORMALIZATION

MAX_SCALE = 8.0  # larger test-time scales are typos (8x a 2048x1024 image is 134 Mpx)


def model_input(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """uint8 (or [0, 1] float) images [B, 3, H, W] -> the float32 input of ``model``: normalised with the
    model's own ``normalization`` (a ``SegmentationNetwork``'s, from its weights; an ONNX file's, from its
    metadata); a bare network without one gets OpenAI's CLIP mean / std."""
    return normalize(images, *getattr(model, "normalization", OPENAI_NORMALIZATION))


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


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode, then restore every submodule's own ``training`` flag exactly.

    ``model.train()`` would not do: some submodules (frozen backbone, BN) are deliberately kept in
    eval during training and must stay that way.
    """
    saved = {name: m.training for name, m in model.named_modules()}
    model.eval()
    try:
        yield model
    finally:
        for name, m in model.named_modules():
            if name in saved:
                m.training = saved[name]


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows covering ``[0, length)``: every ``stride``, the last shifted inside.

    Windows never cross the border (the last one ends exactly at ``length``), so no padding is needed
    and every tile the model sees is real image; a side shorter than ``window`` gets one window.
    """
    win = min(window, length)
    count = -(-max(length - win, 0) // stride) + 1  # ceil((length - win) / stride) + 1
    return [min(i * stride, length - win) for i in range(count)]


def sliding_logits(
    model: torch.nn.Module, images: torch.Tensor, window: int, stride: int | None = None
) -> torch.Tensor:
    """Logits [B, K, H, W] of ``model`` on normalised ``images`` [B, 3, H, W], one window at a time.

    Windows are ``window`` x ``window`` pixels (clipped to the image), ``stride`` apart (default 2/3 of
    the window, i.e. a third of overlap); the logits of overlapping windows are averaged. Only one
    window's activations are alive at a time, so peak memory is that of a ``window``-sized input
    (plus the [B, K, H, W] float32 accumulator).
    """
    if window < 1:
        raise ValueError(f"window must be a positive number of pixels, got {window}")
    stride = max(1, window * 2 // 3) if stride is None else stride
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    b, _, h, w = images.shape
    total: torch.Tensor | None = None  # [B, K, H, W] float32, allocated once K is known
    count = torch.zeros(1, 1, h, w, device=images.device)  # how many windows cover each pixel
    wh, ww = min(window, h), min(window, w)
    for y in window_starts(h, window, stride):
        for x in window_starts(w, window, stride):
            tile = model(images[:, :, y : y + wh, x : x + ww])  # [B, K, h', w']
            if tile.shape[-2:] != (wh, ww):  # a model predicting at reduced resolution
                tile = F.interpolate(tile, size=(wh, ww), mode="bilinear", align_corners=True)
            if total is None:
                # float32 so that sums of many half-precision tiles (autocast) keep their precision.
                total = torch.zeros(b, tile.shape[1], h, w, device=images.device)
            total[:, :, y : y + wh, x : x + ww] += tile.float()
            count[:, :, y : y + wh, x : x + ww] += 1
    return total / count


def predict_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    tta: InferenceSettings = PLAIN,
    out_size: Sequence[int] | None = None,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Logits [B, K, *out_size] (default: the input size) of ``model`` on normalised ``images`` [B, 3, H, W].

    Scaled inputs are resized bilinearly (align_corners=True) and their logits resized back to
    ``out_size``. Runs under autocast with ``amp_dtype`` (None: the inputs' precision); call it under
    :func:`eval_mode` and ``torch.inference_mode()``.
    """
    h, w = images.shape[-2:]
    size = (h, w) if out_size is None else tuple(out_size)

    def run(s: float, flip: bool) -> torch.Tensor:
        x = images.flip(-1) if flip else images  # [B, 3, H, W]
        seen = tta.input_size(h, w, s)
        if seen != (h, w):
            x = _resize(x, seen)
        logits = model(x) if tta.window is None else sliding_logits(model, x, tta.window, tta.stride)
        logits = _resize(logits, size)  # [B, K, *size]
        return logits.flip(-1) if flip else logits

    terms = [(s, f) for s in tta.factors() for f in ((False, True) if tta.flip else (False,))]
    with autocast(images.device, amp_dtype):
        if len(terms) == 1:
            return run(*terms[0])
        # float() so averaging under autocast does not lose precision in half types.
        total = run(*terms[0]).float()
        for term in terms[1:]:
            total = total + run(*term).float()
        return total / len(terms)


def predict_ids(
    model: torch.nn.Module,
    images: torch.Tensor,
    device: str | torch.device = "cpu",
    tta: InferenceSettings = PLAIN,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """trainIds uint8 [B, H, W] (numpy) of uint8 RGB ``images`` [B, 3, H, W] with test-time settings ``tta``.

    Call it under ``eval_mode(model)`` and ``torch.inference_mode()``.
    """
    x = model_input(model, images.to(device))  # [B, 3, H, W] float
    logits = predict_logits(model, x, tta, amp_dtype=amp_dtype)  # [B, K, H, W]
    return logits.argmax(1).to(torch.uint8).cpu().numpy()
