"""Inference: logits of a segmenter at test time (input scale, scale ensemble, sliding window), in eval
mode and under autocast. Evaluation, prediction, video and the demo all come through here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from famix.data.transforms import normalize
from famix.engine.amp import autocast
from famix.normalization import OPENAI_NORMALIZATION
from famix.settings import PLAIN, InferenceSettings


def model_input(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """uint8 (or [0, 1] float) images [B, 3, H, W] -> the float32 input of ``model``: normalised with the
    model's own ``normalization`` (a ``SegmentationNetwork``'s, from its weights; an ONNX file's, from its
    metadata); a bare network without one gets OpenAI's CLIP mean / std."""
    return normalize(images, *getattr(model, "normalization", OPENAI_NORMALIZATION))


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
