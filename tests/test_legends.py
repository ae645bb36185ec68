"""Legends on prediction pictures (images, videos, the Python API) and palette PNGs of class indices."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import famix
from famix.cli import main
from famix.data.label_sets import from_names, parse
from famix.data.trainids import CLASS_NAMES, colorize
from famix.data.transforms import normalize
from famix.engine.visualize import (
    BACKGROUND,
    LegendEntry,
    legend,
    legend_height,
    overlay,
    palette_image,
    present_classes,
    with_legend,
)
from famix.settings import PredictSettings
from famix.stages.predict import predict_paths

CITYSCAPES = from_names(CLASS_NAMES)
# Saturated colours that anti-aliased dark-on-white text never produces: a stray swatch would show.
SIX = parse(
    {
        "classes": [
            {"name": "road", "color": [255, 0, 0]},
            {"name": "sidewalk", "color": [0, 255, 0]},
            {"name": "a building with a long name", "color": [0, 0, 255]},
            {"name": "sky", "color": [255, 255, 0]},
            {"name": "person", "color": [255, 0, 255]},
            {"name": "car", "color": [0, 255, 255]},
        ]
    },
    "test",
)


def _count(strip: np.ndarray, colour) -> int:
    return int((strip == np.asarray(colour, np.uint8)).all(-1).sum())


def _check_strip(strip: np.ndarray, entries: list[LegendEntry], labels, present: list[int]) -> None:
    """Every present class drawn once, in label-set order, with its name and exact colour; nothing else."""
    assert [e.index for e in entries] == present
    assert [e.name for e in entries] == [labels.names[k] for k in present]
    colours = labels.colors()
    for e in entries:
        assert e.color == tuple(int(v) for v in colours[e.index])
        swatch = strip[e.top : e.bottom, e.left : e.right]
        assert swatch.size and (swatch == colours[e.index]).all(), e.name  # filled with exactly the colour
        side = e.bottom - e.top
        assert e.right - e.left == side and e.text_x >= e.right  # a square, the name right of it
        name = strip[e.top : e.bottom, e.text_x : e.text_x + 10 * len(e.name)]
        assert (name != BACKGROUND).any(-1).any(), f"no text right of {e.name}'s swatch"
        assert (name.max(-1) < 128).any(), f"{e.name}: no dark text"  # readable: dark on light
        assert _count(strip, colours[e.index]) == side * side  # one swatch, no second one
    for k in set(range(len(labels))) - set(present):
        assert _count(strip, colours[k]) == 0, f"absent class {labels.names[k]} drawn"


def test_legend_lists_exactly_the_classes_present_in_label_set_order():
    ids = np.full((20, 30), 255, np.uint8)
    ids[:5] = 5  # car first in the image: the legend still follows the label set's order
    ids[5:10, :3] = 2
    ids[10:] = 0
    assert present_classes(ids, len(SIX)) == [0, 2, 5]
    strip, entries = legend(ids, SIX, 400)
    assert strip.dtype == np.uint8 and strip.shape[1:] == (400, 3)
    _check_strip(strip, entries, SIX, [0, 2, 5])
    assert len({e.top for e in entries}) == 1  # wide enough: one row
    again, same = legend(ids, SIX, 400)
    assert np.array_equal(strip, again) and same == entries  # deterministic


def test_legend_wraps_into_rows_inside_the_width():
    ids = np.arange(6, dtype=np.uint8).reshape(2, 3)
    wide, _ = legend(ids, SIX, 1000)
    strip, entries = legend(ids, SIX, 120)
    _check_strip(strip, entries, SIX, list(range(6)))
    assert strip.shape[0] > wide.shape[0] and len({e.top for e in entries}) > 1
    assert [e.top for e in entries] == sorted(e.top for e in entries)  # rows top to bottom
    assert all(e.left >= 0 and e.right <= 120 and e.bottom <= strip.shape[0] for e in entries)
    boxes = sorted((e.top, e.left, e.bottom, e.right) for e in entries)
    for (t, left, b, r), (t2, left2, b2, r2) in zip(boxes, boxes[1:], strict=False):
        assert b <= t2 or r <= left2 or b2 <= t or r2 <= left  # swatches never overlap
    # the tallest legend at a width lists every class, and min_height pads a strip to it
    assert legend_height(SIX, 120) == strip.shape[0]
    short, _ = legend(ids[:1, :1], SIX, 120, min_height=legend_height(SIX, 120))
    assert short.shape == strip.shape


def test_with_legend_appends_below_and_ignore_is_no_class():
    ids = np.array([[13, 255], [255, 13]], np.uint8)
    picture = colorize(ids)
    out = with_legend(picture, ids, CITYSCAPES)
    assert out.shape[1:] == (2, 3) and out.shape[0] > 2
    assert np.array_equal(out[:2], picture)
    _, entries = legend(ids, CITYSCAPES, 2)
    assert [e.name for e in entries] == ["car"]
    empty, none = legend(np.full((3, 3), 255, np.uint8), CITYSCAPES, 50)
    assert none == [] and (empty == BACKGROUND).all()


def test_palette_image_reads_back_as_the_ids():
    ids = np.array([[0, 1, 5], [255, 3, 0]], np.uint8)
    image = palette_image(ids, SIX)
    assert image.mode == "P" and np.array_equal(np.asarray(image), ids)
    pal = image.getpalette()
    for k, colour in enumerate(SIX.colors()):
        assert pal[3 * k : 3 * k + 3] == list(colour)


def _write_png(path, h, w, seed):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_predict_paths_writes_palette_ids_and_pictures_with_legends(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 19, 3, padding=1)
    src = _write_png(tmp_path / "a.png", 30, 70, 0)
    with torch.no_grad():
        expected = model(normalize(torch.from_numpy(np.array(Image.open(src))).permute(2, 0, 1))[None])
    expected = expected[0].argmax(0).numpy().astype(np.uint8)  # [H, W]
    on, off = tmp_path / "on", tmp_path / "off"
    predict_paths(model, [src], on, PredictSettings(device="cpu"), progress=False)
    predict_paths(model, [src], off, PredictSettings(device="cpu", legend=False), progress=False)
    for out in (on, off):
        with Image.open(out / "a_trainid.png") as ids:
            assert ids.mode == "P" and ids.size == (70, 30)
            assert np.array_equal(np.asarray(ids), expected)
            pal = ids.getpalette()
        for k, colour in enumerate(CITYSCAPES.colors()):
            assert pal[3 * k : 3 * k + 3] == list(colour), CLASS_NAMES[k]
    present = present_classes(expected, 19)
    assert len(present) > 1
    colour = np.asarray(Image.open(on / "a_color.png"))
    assert colour.shape[:2] == (30 + legend(expected, CITYSCAPES, 70)[0].shape[0], 70)
    assert np.array_equal(colour[:30], colorize(expected))
    strip, entries = legend(expected, CITYSCAPES, 70)
    assert np.array_equal(colour[30:], strip)
    _check_strip(colour[30:], entries, CITYSCAPES, present)
    over = np.asarray(Image.open(on / "a_overlay.png"))
    assert np.array_equal(over[30:], strip) and over.shape == colour.shape
    assert np.asarray(Image.open(off / "a_color.png")).shape == (30, 70, 3)
    assert np.array_equal(np.asarray(Image.open(off / "a_overlay.png")), over[:30])


def test_famix_predict_no_legend_and_the_record(checkpoint, tmp_path, capsys):
    src = _write_png(tmp_path / "x.png", 24, 40, 1)
    out = tmp_path / "pred"
    main(["predict", str(checkpoint), str(src), "--out", str(out), "--device", "cpu", "--no-legend"])
    for kind in ("color", "overlay"):
        assert Image.open(out / f"x_{kind}.png").size == (40, 24), kind
    ids = np.asarray(Image.open(out / "x_trainid.png"))
    stamp = os.stat(out / "x_color.png").st_mtime_ns
    capsys.readouterr()
    main(["predict", str(checkpoint), str(src), "--out", str(out), "--device", "cpu", "--no-legend"])
    assert "nothing to do" in capsys.readouterr().out and os.stat(out / "x_color.png").st_mtime_ns == stamp
    main(["predict", str(checkpoint), str(src), "--out", str(out), "--device", "cpu"])  # legend: rewritten
    assert "nothing to do" not in capsys.readouterr().out
    strip, entries = legend(ids, CITYSCAPES, 40)
    for kind in ("color", "overlay"):
        picture = np.asarray(Image.open(out / f"x_{kind}.png"))
        assert picture.shape == (24 + strip.shape[0], 40, 3) and np.array_equal(picture[24:], strip), kind
    assert np.array_equal(np.asarray(Image.open(out / "x_trainid.png")), ids)


@pytest.mark.parametrize(
    ("server", "name", "written"),
    [
        ("acdc", "rgb_anon/fog/test/GOPR0475/GOPR0475_frame_000041_rgb_anon.png", "labelTrainIds/fog/"),
        ("cityscapes", "leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png", "berlin/"),
    ],
)
def test_server_submissions_stay_greyscale_ids(checkpoint, tmp_path, server, name, written):
    src = tmp_path / name
    src.parent.mkdir(parents=True)
    _write_png(src, 16, 24, 2)
    out = tmp_path / "submit"
    main(["predict", str(checkpoint), str(src), "--out", str(out), "--device", "cpu", "--server", server])
    files = list((out / written).glob("*.png"))
    assert len(files) == 1
    with Image.open(files[0]) as im:
        assert im.mode == "L" and im.size == (24, 16)  # what the servers take: plain ids, no colours


def test_overlay_video_frames_carry_the_legend(tmp_path):
    av = pytest.importorskip("av", reason="PyAV (famix[video]) is not installed: no video to check")
    h, w = 32, 64
    src = tmp_path / "clip.avi"
    with av.open(str(src), "w") as container:  # lossless source
        stream = container.add_stream("rawvideo", rate=5)
        stream.width, stream.height, stream.pix_fmt = w, h, "rgb24"
        for i in range(3):
            frame = np.full((h, w, 3), 60 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    model = torch.nn.Conv2d(3, 19, 1)  # car (trainId 13) everywhere
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
        model.bias[13] = 1.0
    for legend_on in (True, False):
        out = tmp_path / f"out{legend_on}"
        settings = PredictSettings(device="cpu", legend=legend_on, batch_size=2)
        (dst,) = predict_paths(model, [src], out, settings, progress=False)
        with av.open(str(dst)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
        assert len(frames) == 3
        if not legend_on:
            assert all(f.shape == (h, w, 3) for f in frames)
            continue
        tall = h + legend_height(CITYSCAPES, w)  # room for every class: one size for every frame
        assert all(f.shape == (tall + tall % 2, w, 3) for f in frames)
        _, (entry,) = legend(np.full((h, w), 13, np.uint8), CITYSCAPES, w)
        assert entry.name == "car"
        for f in frames:  # lossy yuv420p: the swatch's inside, within a few levels of car's colour
            inside = f[h + entry.top + 2 : h + entry.bottom - 2, entry.left + 2 : entry.right - 2]
            np.testing.assert_allclose(inside.reshape(-1, 3).mean(0), CITYSCAPES.colors()[13], atol=12)
            assert f[h + entry.bottom + 4 :].mean() > 200  # the rest of the strip: the light background


def test_segmenter_overlay_has_the_legend(checkpoint):
    model = famix.load(checkpoint, device="cpu")
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (20, 36, 3), dtype=np.uint8)
    ids = model.predict(image)
    picture = model.overlay(image)
    assert isinstance(picture, Image.Image) and picture.mode == "RGB"
    got = np.asarray(picture)
    strip, entries = legend(ids, model.labels, 36)
    assert got.shape == (20 + strip.shape[0], 36, 3)
    assert np.array_equal(
        got[:20], overlay(torch.from_numpy(image).permute(2, 0, 1), ids, 0.5, model.labels.palette())
    )
    assert np.array_equal(got[20:], strip)
    _check_strip(got[20:], entries, model.labels, present_classes(ids, model.num_classes))
    given = np.zeros((20, 36), np.uint8)
    given[:, 18:] = 7  # precomputed labels: drawn as given, not predicted
    mine = np.asarray(model.overlay(image, labels=given))
    _, two = legend(given, model.labels, 36)
    assert [e.index for e in two] == [0, 7]
    _check_strip(mine[20:], two, model.labels, [0, 7])
    assert model.overlay(image, legend=False).size == (36, 20)
    with pytest.raises(ValueError, match="labels has shape"):
        model.overlay(image, labels=given[:10])
