"""famix.Segmenter.predict on what `famix predict` takes (folders, globs, videos) equals `famix predict`: the
real command's index PNGs, pixel for pixel, and for videos the per-frame maps of the function it segments
frames with (its video files are colour pictures, lossily encoded: compared approximately)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import famix
from famix.cli import main
from famix.engine.inference import eval_mode, predict_ids
from famix.engine.video import segment_video
from famix.stages.predict import RECORD, load_model
from famix.world.synthetic import render

# name -> size (H, W): two sizes, nested folders, a JPEG; names unique, so `famix predict` writes <stem>_*.png
SCENES = {
    "b/scene0.png": (48, 64),
    "a/c/scene1.jpg": (48, 64),
    "scene2.png": (40, 56),
    "a/scene3.png": (48, 64),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder of street scenes in sub-folders, and a file that is not an image."""
    root = tmp_path_factory.mktemp("photos")
    for i, (name, size) in enumerate(SCENES.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render(30 + i, "day", size)[0]).save(root / name)
    (root / "notes.txt").write_text("not an image")
    return root


def famix_predict(checkpoint: Path, inputs: list, out: Path, *options: str) -> list[Path]:
    """Run the real `famix predict`; returns the files it recorded as written, in its order."""
    main(["predict", str(checkpoint), *map(str, inputs), "--out", str(out), *options])
    (entry,) = json.loads((out / RECORD).read_text()).values()
    return [Path(p) for p in entry["result"]["written"]]


def test_a_folder_and_a_glob_equal_famix_predict(checkpoint, photos, tmp_path):
    model = famix.load(checkpoint, device="cpu")
    for name, source in [("folder", photos), ("glob", str(photos / "**" / "*.png"))]:
        got = model.predict(source, batch_size=2)
        suffixes = (".png", ".jpg") if name == "folder" else (".png",)
        assert sorted(got) == sorted(p for p in photos.rglob("*") if p.suffix in suffixes), name
        written = famix_predict(
            checkpoint, [source], tmp_path / name, "--outputs", "trainid", "--batch-size", "2"
        )
        assert [p.name for p in written] == [f"{p.stem}_trainid.png" for p in got], name  # its order
        for path, ids in got.items():
            want = np.array(Image.open(tmp_path / name / f"{path.stem}_trainid.png"))
            assert ids.dtype == np.uint8 and ids.shape == SCENES[path.relative_to(photos).as_posix()]
            assert np.array_equal(ids, want), (name, path)
    assert len(np.unique(np.concatenate([m.ravel() for m in got.values()]))) > 1  # the maps say something
    # a list of paths mixing a folder, a glob and a file: famix predict's de-duplicated files, keyed by path
    mixed = [photos / "a", str(photos / "*.png"), photos / "b" / "scene0.png", photos / "a" / "scene3.png"]
    got = model.predict(mixed)
    assert list(got) == [photos / n for n in ("a/c/scene1.jpg", "a/scene3.png", "scene2.png", "b/scene0.png")]
    written = famix_predict(checkpoint, mixed, tmp_path / "mixed", "--outputs", "trainid")
    assert [p.name for p in written] == [f"{p.stem}_trainid.png" for p in got]
    assert all(np.array_equal(m, np.array(Image.open(w))) for m, w in zip(got.values(), written, strict=True))
    logits = model.predict_logits(photos)
    assert [tuple(x.shape) for x in logits.values()] == [
        (19, *SCENES[p.relative_to(photos).as_posix()]) for p in logits
    ]
    assert all(np.array_equal(x.argmax(0).numpy(), model.predict(p)) for p, x in logits.items())


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 5) -> Path:
    av = pytest.importorskip("av")
    h, w = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def _decoded(path: Path) -> list[np.ndarray]:
    av = pytest.importorskip("av")
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]


def test_a_video_equals_famix_predict_frame_by_frame(checkpoint, photos, tmp_path):
    clip = _write_video(
        tmp_path / "drive" / "clip.mp4", [render(50 + t, "day", (48, 64))[0] for t in range(7)]
    )
    model = famix.load(checkpoint, device="cpu")
    got = model.predict(clip, batch_size=3)
    assert got.dtype == np.uint8 and got.shape == (7, 48, 64)
    # famix predict writes a video's maps as colour pictures only (lossy H.264 / MPEG-4): the exact oracle is
    # what it segments each frame with, segment_video (predict_paths' call) with famix predict's model
    network, _, _ = load_model(checkpoint, "cpu")
    seen = []

    def segment(images: torch.Tensor) -> np.ndarray:
        seen.append(functools.partial(predict_ids, network, device="cpu")(images))
        return seen[-1]

    with eval_mode(network), torch.inference_mode():
        segment_video(clip, tmp_path / "reference.mp4", segment, "color", batch_size=3, progress=False)
    assert [len(s) for s in seen] == [3, 3, 1] and np.array_equal(np.concatenate(seen), got)
    # ... which is predict of each decoded frame as an image
    frames = _decoded(clip)
    assert np.array_equal(np.stack(model.predict(frames)), got)
    # and the real command's colour video shows those maps, up to its codec (yuv420p halves the colour
    # resolution: class edges blur): each frame is nearest the colours of its own map, a few levels off
    (video,) = famix_predict(checkpoint, [clip], tmp_path / "cli", "--video-output", "color", "--no-legend")
    shown = np.stack(_decoded(video)).astype(int)  # [T, H, W, 3]
    assert shown.shape == (7, 48, 64, 3)
    colours = model.colorize(got).astype(int)  # [T, H, W, 3]
    distance = np.abs(shown[:, None] - colours[None]).mean((2, 3, 4))  # [T shown, T maps]
    assert (distance.argmin(1) == np.arange(7)).all() and distance.diagonal().max() < 12, distance
    logits = model.predict_logits(clip, batch_size=4)
    assert logits.shape == (7, 19, 48, 64) and np.array_equal(logits.argmax(1).numpy(), got)
    # in a list of inputs, and in a folder with images
    image = photos / "scene2.png"
    one, again = model.predict([image, clip])
    assert np.array_equal(one, model.predict(image)) and np.array_equal(again, got)
    (tmp_path / "drive" / "still.png").write_bytes(image.read_bytes())
    by_path = model.predict(tmp_path / "drive")
    assert list(by_path) == [tmp_path / "drive" / "clip.mp4", tmp_path / "drive" / "still.png"]
    assert np.array_equal(by_path[clip], got) and np.array_equal(
        by_path[tmp_path / "drive" / "still.png"], one
    )


def test_inputs_that_name_nothing_say_so(checkpoint, photos, tmp_path):
    model = famix.load(checkpoint, device="cpu")
    (tmp_path / "empty").mkdir()
    for source in [tmp_path / "empty", str(photos / "*.bmp"), [photos, str(tmp_path / "none" / "*.png")]]:
        with pytest.raises(FileNotFoundError, match="nothing found for input"):
            model.predict(source)
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        model.predict(tmp_path / "nowhere.png")
    with pytest.raises(FileNotFoundError, match="video not found: .*nowhere.mp4"):
        model.predict([photos / "scene2.png", tmp_path / "nowhere.mp4"])
    with pytest.raises(TypeError, match="item 1 is a ndarray in a list with a folder .* paths only"):
        model.predict([photos, np.zeros((8, 8, 3), np.uint8)])
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    pytest.importorskip("av")
    with pytest.raises(ValueError, match="cannot read video .*broken.mp4"):
        model.predict(tmp_path / "broken.mp4")
