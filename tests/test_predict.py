"""Tests for famix.stages.predict: image listing/loading, overlay and predict_paths outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from famix.data import readers
from famix.data.readers import read_image
from famix.data.trainids import colorize
from famix.data.transforms import normalize
from famix.engine.visualize import overlay
from famix.settings import InferenceSettings, PredictSettings
from famix.stages import predict
from famix.stages.predict import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    list_images,
    output_stems,
    predict_paths,
)


def _write_png(path, h, w, seed):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def pil_rgb(path) -> torch.Tensor:
    """The reference reader: PIL's full decode to RGB, uint8 [3, H, W] (what predict read on its own before
    it shared the dataset reader)."""
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


def test_read_image_and_corrupt(tmp_path):
    arr = _write_png(tmp_path / "a.png", 5, 7, 0)
    img = read_image(tmp_path / "a.png")
    assert img.dtype == torch.uint8 and img.shape == (3, 5, 7)
    np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), arr)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
        read_image(bad)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((tmp_path / "a.png").read_bytes()[:-30])
    with pytest.raises(ValueError, match="cannot read image .*truncated.png.*re-download"):
        read_image(truncated)
    with pytest.raises(FileNotFoundError, match="image not found: .*missing.png"):
        read_image(tmp_path / "missing.png")


def _images_of_every_mode(folder) -> list:
    """PNGs in RGB, RGBA, greyscale (+ alpha, + transparency), palette (+ transparency, 2-bit) and 1-bit
    modes, a JPEG under a .png name, and RGB and greyscale JPEGs."""
    rng = np.random.default_rng(0)
    rgb = lambda: Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8))  # noqa: E731
    grey = Image.fromarray(rng.integers(0, 256, (9, 11), dtype=np.uint8))
    files = {
        "rgb.png": (rgb(), {}),
        "rgba.png": (Image.fromarray(rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)), {}),
        "grey.png": (grey, {}),
        "grey_alpha.png": (
            Image.fromarray(rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)).convert("LA"),
            {},
        ),
        "grey_trns.png": (grey, {"transparency": 5}),
        "palette.png": (rgb().quantize(20), {}),
        "palette_trns.png": (rgb().quantize(20), {"transparency": 3}),
        "palette_2bit.png": (rgb().quantize(4), {"bits": 2}),
        "bilevel.png": (grey.convert("1"), {}),
        "jpeg_inside.png": (rgb(), {"format": "JPEG"}),
        "rgb.jpg": (rgb(), {"quality": 90}),
        "grey.jpg": (grey, {"quality": 90}),
    }
    for name, (image, options) in files.items():
        image.save(folder / name, **options)
    return [folder / name for name in files]


def test_predict_reads_images_as_the_datasets_do(tmp_path):
    """One reader for both (datasets and predict), with PIL's pixels in every mode: predictions stay those
    of the PIL reader predict used before."""
    assert predict.read_image is readers.read_image
    paths = _images_of_every_mode(tmp_path)
    for path in paths:
        expected = pil_rgb(path)
        image = read_image(path)
        assert image.dtype == torch.uint8, path.name
        assert torch.equal(image, expected), path.name
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 19, 1)
    written = predict_paths(
        model,
        paths,
        tmp_path / "out",
        PredictSettings(device="cpu", outputs=["trainid"], batch_size=4),
        progress=False,
    )
    for path, dst in zip(paths, written, strict=True):
        with torch.no_grad():
            expected = model(normalize(pil_rgb(path))[None])[0].argmax(0).numpy()
        np.testing.assert_array_equal(np.asarray(Image.open(dst)), expected, err_msg=path.name)


def test_list_images(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.png", "a.JPG", "sub/c.webp", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    assert list_images([str(tmp_path)]) == [tmp_path / "a.JPG", tmp_path / "b.png", tmp_path / "sub/c.webp"]
    assert list_images([str(tmp_path / "*.png"), str(tmp_path / "b.png")]) == [tmp_path / "b.png"]
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        list_images([str(tmp_path / "nothing_here*.png")])
    (tmp_path / "sub/clip.MP4").write_bytes(b"x")
    media = list_images([str(tmp_path / "sub")], IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
    assert media == [tmp_path / "sub/c.webp", tmp_path / "sub/clip.MP4"]


def test_overlay():
    image = np.full((3, 2, 2), 100, dtype=np.uint8)
    ids = np.array([[0, 255], [13, 0]])
    out = overlay(image, ids, alpha=0.5)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 1], [100, 100, 100])  # ignore keeps the image
    np.testing.assert_array_equal(out[0, 0], [114, 82, 114])  # (100 + road (128, 64, 128)) / 2


def test_predict_paths(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 19, 3, padding=1)
    sizes = {"img1": (12, 20), "img2": (9, 7)}
    paths = [tmp_path / f"{stem}.png" for stem in sizes]
    for i, (p, (h, w)) in enumerate(zip(paths, sizes.values(), strict=True)):
        _write_png(p, h, w, i)
    out_dir = tmp_path / "out" / "nested"
    written = predict_paths(model, paths, out_dir, PredictSettings(device="cpu"), progress=False)
    assert len(written) == 6 and all(p.parent == out_dir for p in written)
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no temp files left behind
    for p, (stem, (h, w)) in zip(paths, sizes.items(), strict=True):
        with torch.no_grad():
            expected = model(normalize(pil_rgb(p))[None])[0].argmax(0).numpy()
        trainid = Image.open(out_dir / f"{stem}_trainid.png")
        assert trainid.mode == "P" and trainid.size == (w, h)  # indices, with the colours as palette
        np.testing.assert_array_equal(np.asarray(trainid), expected)
        color = np.asarray(Image.open(out_dir / f"{stem}_color.png"))
        np.testing.assert_array_equal(color[:h], colorize(expected))  # legend below: test_legends.py
        assert color.shape[0] > h and color.shape[1] == w
        assert Image.open(out_dir / f"{stem}_overlay.png").size == (w, color.shape[0])


def test_predict_paths_batches_equal_sizes(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 19, 3, padding=1)
    batch_sizes = []
    model.register_forward_pre_hook(lambda m, args: batch_sizes.append(args[0].shape[0]))
    sizes = [(8, 10), (6, 6), (8, 10), (8, 10), (6, 6)]
    paths = []
    for i, (h, w) in enumerate(sizes):
        _write_png(tmp_path / f"im{i}.png", h, w, i)
        paths.append(tmp_path / f"im{i}.png")
    written = predict_paths(
        model,
        paths,
        tmp_path / "out",
        PredictSettings(device="cpu", outputs=["trainid"], batch_size=2),
        progress=False,
    )
    assert written == [tmp_path / "out" / f"im{i}_trainid.png" for i in range(5)]  # input order kept
    assert sorted(batch_sizes) == [1, 2, 2]  # (8, 10): 2 + 1 images, (6, 6): 2 images
    for p, dst in zip(paths, written, strict=True):
        with torch.no_grad():
            expected = model(normalize(pil_rgb(p))[None])[0].argmax(0).numpy()
        np.testing.assert_array_equal(np.asarray(Image.open(dst)), expected)


def test_predict_paths_window_and_errors(tmp_path):
    model = torch.nn.Conv2d(3, 19, 1)  # pointwise: sliding windows give the full-image result
    _write_png(tmp_path / "a.png", 11, 23, 0)
    full = predict_paths(
        model,
        [tmp_path / "a.png"],
        tmp_path / "full",
        PredictSettings(device="cpu", outputs=["trainid"]),
        progress=False,
    )
    tiled = predict_paths(
        model,
        [tmp_path / "a.png"],
        tmp_path / "tiled",
        PredictSettings(device="cpu", outputs=["trainid"], tta=InferenceSettings(window=8, stride=5)),
        progress=False,
    )
    np.testing.assert_array_equal(np.asarray(Image.open(full[0])), np.asarray(Image.open(tiled[0])))
    with pytest.raises(ValueError, match="batch_size"):
        predict_paths(
            model, [tmp_path / "a.png"], tmp_path / "x", PredictSettings(device="cpu", batch_size=0)
        )
    with pytest.raises(ValueError, match="video_output"):
        predict_paths(
            model, [tmp_path / "a.png"], tmp_path / "x", PredictSettings(device="cpu", video_output="trainid")
        )
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.png"):
        predict_paths(
            model, [tmp_path / "bad.png"], tmp_path / "x", PredictSettings(device="cpu"), progress=False
        )


def test_output_names_keep_the_extension_when_stems_collide(tmp_path):
    names = ["x/a.png", "x/a.jpg", "y/a.png", "x/b.png", "y/c.JPG"]
    assert output_stems([tmp_path / n for n in names]) == ["a_png", "a_jpg", "a_png_2", "b", "c"]
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 19, 1)
    for i, n in enumerate(["a.png", "a.jpg"]):
        arr = np.random.default_rng(i).integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / n, quality=95)
    written = predict_paths(
        model,
        [tmp_path / "a.png", tmp_path / "a.jpg"],
        tmp_path / "o",
        PredictSettings(device="cpu", outputs=["trainid"]),
        progress=False,
    )
    assert [p.name for p in written] == ["a_png_trainid.png", "a_jpg_trainid.png"]
    for src, dst in zip(["a.png", "a.jpg"], written, strict=True):
        with torch.no_grad():
            expected = model(normalize(pil_rgb(tmp_path / src))[None])[0].argmax(0).numpy()
        np.testing.assert_array_equal(np.asarray(Image.open(dst)), expected)
