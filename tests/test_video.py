"""Tests for famix.engine.video: frame count, rate and content of segmented videos; errors without PyAV."""

from __future__ import annotations

import functools
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from famix.data.label_sets import from_names
from famix.data.trainids import CLASS_NAMES
from famix.engine.inference import predict_ids
from famix.engine.video import segment_video
from famix.engine.visualize import legend_height
from famix.settings import PredictSettings
from famix.stages.predict import predict_paths

ROAD = np.array([128, 64, 128])  # Cityscapes colour of trainId 0


@pytest.fixture
def av():
    return pytest.importorskip("av")


def _write_video(av, path, frames, fps, codec="mpeg4", pix_fmt="yuv420p"):
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def _read_video(av, path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, stream.average_rate


def _random_frames(n, h, w):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _road_model():
    model = torch.nn.Conv2d(3, 19, 1)  # predicts road (trainId 0) everywhere
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
        model.bias[0] = 1.0
    return model


def test_predict_paths_video_keeps_frame_count_and_rate(av, tmp_path):
    src = _write_video(av, tmp_path / "clip.mp4", _random_frames(12, 48, 64), fps=10)
    torch.manual_seed(0)
    batches = []
    model = torch.nn.Conv2d(3, 19, 3, padding=1)
    model.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    out = tmp_path / "out"
    written = predict_paths(model, [src], out, PredictSettings(device="cpu", batch_size=5), progress=False)
    assert written == [out / "clip_overlay.mp4"]
    assert [p.name for p in out.iterdir()] == ["clip_overlay.mp4"]  # no temporary file left
    assert batches == [5, 5, 2]
    frames, rate = _read_video(av, written[0])
    assert len(frames) == 12 and rate == Fraction(10)
    assert frames[0].shape == (48 + legend_height(from_names(CLASS_NAMES), 64), 64, 3)  # a legend below


@pytest.mark.parametrize("kind", ["color", "overlay"])
def test_segment_video_content_odd_size(av, tmp_path, kind):
    # rawvideo is lossless and allows odd sizes: the output is padded to even, frame rate 7 kept.
    source = [np.full((15, 21, 3), 40 * i, dtype=np.uint8) for i in range(5)]
    src = _write_video(av, tmp_path / "odd.avi", source, fps=7, codec="rawvideo", pix_fmt="rgb24")
    model = _road_model()
    with torch.inference_mode():
        dst = segment_video(
            src, tmp_path / f"odd_{kind}.mkv", functools.partial(predict_ids, model), kind, 2, False
        )
    frames, rate = _read_video(av, dst)
    assert len(frames) == 5 and rate == Fraction(7)
    assert frames[0].shape == (16, 22, 3)
    for image, frame in zip(source, frames, strict=True):
        expected = ROAD if kind == "color" else (image[0, 0] + ROAD) / 2
        # lossy yuv420p coding: compare the mean colour, with a tolerance of a few levels
        np.testing.assert_allclose(frame.reshape(-1, 3).mean(0), expected, atol=6)


def test_segment_video_errors(av, tmp_path):
    segment = functools.partial(predict_ids, _road_model())
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="bad.mp4"):
        segment_video(bad, tmp_path / "out.mp4", segment, progress=False)
    with pytest.raises(ValueError, match="extensions"):
        segment_video(bad, tmp_path / "out.webm", segment, progress=False)
    with pytest.raises(ValueError, match="unknown video output"):
        segment_video(bad, tmp_path / "out.mp4", segment, kind="trainid", progress=False)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        segment_video(tmp_path / "missing.mp4", tmp_path / "out.mp4", segment, progress=False)
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".out*"))


def test_missing_pyav_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(image)
    with pytest.raises(ImportError, match=r'pip install "famix\[video\]"'):
        predict_paths(
            _road_model(),
            [image, tmp_path / "clip.mp4"],
            tmp_path / "out",
            PredictSettings(device="cpu"),
            progress=False,
        )
    assert not list((tmp_path / "out").iterdir())  # failed before segmenting the images
    with pytest.raises(ImportError, match=r'pip install "famix\[video\]"'):
        segment_video(tmp_path / "clip.mp4", tmp_path / "o.mp4", lambda x: x, progress=False)
