"""Video segmentation with PyAV (optional extra ``famix[video]``): decode, segment in batches, encode."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from famix.engine.visualize import render
from famix.io import atomic_path
from famix.progress import progress_bar
from famix.settings import VIDEO_OUTPUTS

# Output container by file extension; all three take H.264 / MPEG-4 part 2 video.
CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
# Used when the source does not say its frame rate (rare: raw streams).
_FALLBACK_RATE = Fraction(25)

# uint8 RGB frames [B, 3, H, W] -> trainIds uint8 [B, H, W], e.g. functools.partial(predict_ids, model)
Segment = Callable[[torch.Tensor], np.ndarray]


def import_av():
    """Import PyAV, or raise an ImportError that says how to install it."""
    try:
        import av
    except ImportError as e:
        raise ImportError('video files need PyAV, an optional extra: pip install "famix[video]"') from e
    return av


@contextlib.contextmanager
def open_video(src: str | os.PathLike):
    """The container and first video stream of video ``src``, opened for multi-threaded decoding (as
    ``famix predict`` and ``Segmenter.predict`` read videos); a missing, unreadable or stream-less file is
    one clear error naming it."""
    av = import_av()
    if not Path(src).is_file():
        raise FileNotFoundError(f"video not found: {src}")
    try:
        source = av.open(str(src))
    except av.FFmpegError as e:
        raise ValueError(f"cannot read video {src}: {e}. Check that it is a valid video file.") from e
    with source:
        if not source.streams.video:
            raise ValueError(f"{src} has no video stream")
        stream = source.streams.video[0]
        stream.thread_type = "AUTO"  # multi-threaded decoding
        yield source, stream


def _even(frame: np.ndarray) -> np.ndarray:
    # yuv420p stores colour at half resolution, so H.264 needs even sizes: repeat the last row/column.
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class _Encoder:
    """Writes RGB frames to an open output container, creating the stream at the first frame's size."""

    def __init__(self, av, container, rate: Fraction):
        self.av, self.container, self.rate = av, container, rate
        self.stream = None
        self.count = 0

    def write(self, frame: np.ndarray) -> None:
        frame = _even(frame)  # [H, W, 3] uint8
        if self.stream is None:
            # libx264 where FFmpeg has it (smaller, better); MPEG-4 part 2 is in every FFmpeg build.
            codec = "libx264" if "libx264" in self.av.codecs_available else "mpeg4"
            self.stream = self.container.add_stream(codec, rate=self.rate)
            self.stream.height, self.stream.width = frame.shape[:2]
            self.stream.pix_fmt = "yuv420p"  # what every player decodes
            if codec == "libx264":
                self.stream.options = {"crf": "18"}  # visually lossless: the overlay's thin edges survive
            else:
                self.stream.bit_rate = int(frame.shape[0] * frame.shape[1] * float(self.rate))  # ~1 bit/px
        elif frame.shape[:2] != (self.stream.height, self.stream.width):
            raise ValueError(
                f"frame {self.count} is {frame.shape[1]}x{frame.shape[0]}, the video "
                f"{self.stream.width}x{self.stream.height}: every picture drawn must have one size"
            )
        out = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        # Constant frame rate: frame i is shown at i / rate, whatever the source's timestamps were.
        out.pts = self.count
        out.time_base = 1 / self.rate
        self.count += 1
        self.container.mux(self.stream.encode(out))

    def close(self) -> None:
        if self.stream is not None:
            self.container.mux(self.stream.encode(None))  # flush the frames the encoder holds back


def segment_video(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    segment: Segment,
    kind: str = "overlay",
    batch_size: int = 1,
    progress: bool = True,
    draw=render,
) -> Path:
    """Segment every frame of video ``src`` and write an ``overlay`` or ``color`` video to ``dst``
    (``draw(kind, image, ids)``: the picture of a frame, :func:`famix.engine.visualize.render`; it may add
    rows below the frame, e.g. a legend, as long as every frame's picture has one size: ``famix predict``
    draws each frame's legend of the classes in that frame in a strip of fixed height).

    Frames are decoded with PyAV and passed to ``segment`` ``batch_size`` at a time. The output has the
    source's frame count and (average) frame rate, H.264 (or MPEG-4 part 2) in yuv420p; odd sizes are
    padded by one repeated row/column; audio is dropped. ``dst`` (``.mp4``, ``.mov`` or ``.mkv``)
    appears only when complete. Needs PyAV (``pip install "famix[video]"``).
    """
    if kind not in VIDEO_OUTPUTS:
        raise ValueError(f"unknown video output {kind!r}; choose from {VIDEO_OUTPUTS}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    src, dst = Path(src), Path(dst)
    if dst.suffix.lower() not in CONTAINERS:
        raise ValueError(f"cannot write video {dst}: use one of the extensions {', '.join(CONTAINERS)}")
    av = import_av()
    with open_video(src) as (source, stream):
        rate = stream.average_rate or stream.guessed_rate or _FALLBACK_RATE
        frames = progress_bar(
            source.decode(stream), total=stream.frames or None, desc=src.name, disable=not progress
        )
        with atomic_path(dst) as tmp:
            # The temporary name ends in .tmp, so the container format is given, not guessed.
            with av.open(str(tmp), mode="w", format=CONTAINERS[dst.suffix.lower()]) as sink:
                encoder = _Encoder(av, sink, Fraction(rate))
                batch: list[np.ndarray] = []
                for frame in frames:
                    batch.append(frame.to_ndarray(format="rgb24"))  # [H, W, 3] uint8
                    if len(batch) == batch_size:
                        _write_batch(batch, segment, kind, encoder, draw)
                        batch = []
                if batch:
                    _write_batch(batch, segment, kind, encoder, draw)
                encoder.close()
            if encoder.count == 0:
                raise ValueError(f"no frames could be decoded from {src}")
    return dst


def _write_batch(batch: list[np.ndarray], segment: Segment, kind: str, encoder: _Encoder, draw) -> None:
    images = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)  # [B, 3, H, W] uint8
    for image, ids in zip(images, segment(images), strict=True):
        encoder.write(draw(kind, image, ids))
