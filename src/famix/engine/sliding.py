"""Sliding-window inference: segment an image too large for memory tile by tile, averaging overlaps."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
        # A stride longer than the window would leave unpredicted gaps between tiles.
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
