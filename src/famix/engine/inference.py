"""Inference: logits of a segmenter at test time (input scale, scale ensemble, sliding window), in eval
mode and under autocast. Evaluation, prediction, video and the demo all come through here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from famix.engine.amp import autocast


@dataclass(frozen=True)
class InferenceSettings:
    """How logits are computed at test time.

    ``scale`` s resizes the input (0.5 = half resolution; None = as is), ``ensemble`` averages the logits
    at scale 1 and s, ``window`` segments each (scaled) input in overlapping ``window``-pixel tiles
    ``stride`` apart (default 2/3 of the window) for images too large for memory.
    """

    scale: float | None = None
    ensemble: bool = False
    window: int | None = None
    stride: int | None = None

    def __post_init__(self) -> None:
        if self.scale is not None and self.scale <= 0:
            raise ValueError(f"--scale must be a positive factor, got {self.scale}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"--window must be a positive number of pixels, got {self.window}")
        if self.stride is not None and (self.window is None or not 1 <= self.stride <= self.window):
            # A stride longer than the window would leave unpredicted gaps between tiles.
            raise ValueError(f"--stride must be in [1, --window] and needs --window, got {self.stride}")

    def describe(self) -> str:
        """A short name for file names: "" for the plain setting, else e.g. "s0.5e-w1024"."""
        parts = []
        if self.scale not in (None, 1.0):
            parts.append(f"s{self.scale:g}" + ("e" if self.ensemble else ""))
        if self.window is not None:
            parts.append(f"w{self.window}" + (f"s{self.stride}" if self.stride else ""))
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

    def run(s: float) -> torch.Tensor:
        x = images
        if s != 1.0:
            # round() so that e.g. 1024 * 0.5 is exactly 512 and odd sizes do not drift.
            x = _resize(images, (max(1, round(h * s)), max(1, round(w * s))))
        logits = model(x) if tta.window is None else sliding_logits(model, x, tta.window, tta.stride)
        return _resize(logits, size)  # [B, K, *size]

    s = 1.0 if tta.scale is None else float(tta.scale)
    with autocast(images.device, amp_dtype):
        if not tta.ensemble or s == 1.0:
            return run(s)
        # float() so averaging under autocast does not lose precision in half types.
        return (run(1.0).float() + run(s).float()) / 2
