"""Images read as they are (issue 27): 16-bit and float images scaled to 8 bits, not clipped; EXIF orientation
applied (and image_size reporting the turned size without decoding); images smaller than the network padded.
Every path that reads images: the reader, datasets, ``famix predict`` and the Python API. Real files, values
compared with the tests' own computation."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

import famix
from famix.cli import main
from famix.data import folder
from famix.data.readers import as_rgb, image_header, image_size, read_image, read_raw_label
from famix.engine.inference import eval_mode, model_input
from famix.settings import InferenceSettings


def scaled16(values: np.ndarray) -> np.ndarray:
    """The 8-bit value nearest to each 16-bit one: round(v * 255 / 65535)."""
    return np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)


def gradient16(h: int = 24, w: int = 40) -> np.ndarray:
    """uint16 [H, W] covering 0..65535 (and values between 8-bit steps)."""
    return np.linspace(0, 65535, h * w).round().astype(np.uint16).reshape(h, w)


def write_png16_rgb(path: Path, array: np.ndarray) -> Path:
    """A 16-bit RGB PNG of uint16 [H, W, 3], written chunk by chunk (PIL has no mode to write one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = array.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)  # filter 0 per row
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16 bits, colour type 2 (RGB)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def chw(array: np.ndarray) -> np.ndarray:
    """[H, W] grey or [H, W, 3] -> [3, H, W], as read_image returns."""
    return np.repeat(array[None], 3, 0) if array.ndim == 2 else array.transpose(2, 0, 1)


def test_16bit_grey_is_scaled_in_every_file_and_in_memory_form(tmp_path):
    grey = gradient16()
    expected = chw(scaled16(grey))
    Image.fromarray(grey).save(tmp_path / "grey16.png")  # PIL mode I;16
    Image.fromarray(grey).save(tmp_path / "grey16.tif")
    with Image.open(tmp_path / "grey16.png") as im:
        assert im.mode == "I;16" and np.array(im.convert("RGB")).mean() > 250  # what PIL alone gives: white
        pil = im.copy()
    for what in (tmp_path / "grey16.png", tmp_path / "grey16.tif", str(tmp_path / "grey16.png"), pil, grey):
        np.testing.assert_array_equal(as_rgb(what).numpy(), expected, err_msg=str(type(what)))
    np.testing.assert_array_equal(read_image(tmp_path / "grey16.png").numpy(), expected)
    np.testing.assert_array_equal(as_rgb(torch.from_numpy(grey)[None]).numpy(), expected)  # torch.uint16
    np.testing.assert_array_equal(as_rgb(grey.astype(">u2")).numpy(), expected)  # big-endian array
    np.testing.assert_array_equal(as_rgb(Image.fromarray(grey.astype(np.int32))).numpy(), expected)  # mode I
    # an 8-bit image widened to 16 bits (v * 257) reads back exactly
    eight = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "widened.png")
    np.testing.assert_array_equal(read_image(tmp_path / "widened.png").numpy(), chw(eight))


def test_16bit_rgb_png_is_scaled(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 65536, (18, 26, 3), dtype=np.uint16)
    path = write_png16_rgb(tmp_path / "rgb16.png", rgb)
    with Image.open(path) as im:  # PIL keeps the high byte: v >> 8, not the nearest value
        np.testing.assert_array_equal(np.array(im.convert("RGB")), (rgb >> 8).astype(np.uint8))
    np.testing.assert_array_equal(read_image(path).numpy(), chw(scaled16(rgb)))
    np.testing.assert_array_equal(as_rgb(rgb).numpy(), chw(scaled16(rgb)))


def test_float_files_in_0_1_are_scaled_and_other_depths_refused(tmp_path):
    values = np.linspace(0, 1, 24 * 40, dtype=np.float32).reshape(24, 40)
    expected = chw(np.rint(values.astype(np.float64) * 255).astype(np.uint8))
    Image.fromarray(values).save(tmp_path / "float.tif")  # PIL mode F
    np.testing.assert_array_equal(read_image(tmp_path / "float.tif").numpy(), expected)
    np.testing.assert_array_equal(as_rgb(Image.fromarray(values)).numpy(), expected)
    Image.fromarray(values * 255).save(tmp_path / "float255.tif")
    with pytest.raises(ValueError, match=r"image .*float255.tif is float32 with values in \[0, 255\]: famix"):
        read_image(tmp_path / "float255.tif")
    Image.fromarray(np.array([[-1, 70000]], np.int32)).save(tmp_path / "int32.tif")
    with pytest.raises(ValueError, match=r"int32.tif has 32-bit integer values in \[-1, 70000\]"):
        read_image(tmp_path / "int32.tif")
    expected = "expected uint8 \\(0-255\\) or uint16 \\(0-65535, scaled to 8 bits\\): convert it"
    refused = [  # arrays and tensors of floats: [0, 1] or [0, 255]? only the caller knows
        (values, "image 0 is torch.float32, " + expected),
        (torch.from_numpy(values)[None].double(), "image 0 is torch.float64, " + expected),
        (np.zeros((4, 4, 3), np.int64), "image 0 is torch.int64, " + expected),
        (np.zeros((4, 4, 3), bool), "image 0 is torch.bool, " + expected),
        (np.zeros((4, 4, 3), "M8[s]"), "image 0 is a numpy array of datetime64"),
        (np.zeros((0, 5, 3), np.uint8), r"image 0 has shape \(0, 5, 3\): no pixels"),
    ]
    for image, says in refused:
        with pytest.raises(ValueError, match=says):
            as_rgb(image, "image 0")


def test_16bit_labels_are_class_ids_not_scaled(tmp_path):
    """A dataset of 16-bit images and 16-bit label PNGs: images scaled, labels read as the ids they hold."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    grey = gradient16(32, 48)
    ids = (np.arange(32 * 48).reshape(32, 48) % 19).astype(np.uint16)
    Image.fromarray(grey).save(root / "images" / "a.png")
    Image.fromarray(ids).save(root / "labels" / "a.png")  # mode I;16 too
    rgb16 = np.random.default_rng(1).integers(0, 65536, (32, 48, 3), dtype=np.uint16)
    write_png16_rgb(root / "images" / "b.png", rgb16)
    Image.fromarray(ids.astype(np.uint8)).save(root / "labels" / "b.png")
    data = folder.build([str(root)])
    for i, image16 in enumerate((grey, rgb16)):
        image, label = data[i]
        np.testing.assert_array_equal(image.numpy(), chw(scaled16(image16)))
        np.testing.assert_array_equal(label.numpy(), ids)  # the 19 trainIds, as written
    np.testing.assert_array_equal(read_raw_label(root / "labels" / "a.png", "synthia"), ids)  # 16-bit ids


ROTATED = {  # EXIF orientation -> the stored pixels [H, W, ...] as viewers show them
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),  # a quarter turn clockwise: the phone held upright
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def with_orientation(path: Path, pixels: np.ndarray, orientation: int, **options) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, **options)
    return path


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif"])
def test_exif_orientation_is_applied_and_image_size_reports_it(tmp_path, suffix):
    stored = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for orientation, turn in ROTATED.items():
        options = {"quality": 100} if suffix == ".jpg" else {"lossless": True} if suffix == ".webp" else {}
        path = with_orientation(tmp_path / f"o{orientation}{suffix}", stored, orientation, **options)
        with Image.open(path) as im:
            decoded = np.array(im.convert("RGB")) if suffix != ".tif" else stored  # JPEG: its own pixels
            viewers = np.array(ImageOps.exif_transpose(im).convert("RGB"))
        shown = np.ascontiguousarray(turn(decoded))
        np.testing.assert_array_equal(viewers, shown, err_msg=f"{orientation} (the test's own table)")
        np.testing.assert_array_equal(
            read_image(path).permute(1, 2, 0).numpy(), shown, err_msg=str(orientation)
        )
        assert image_size(path) == (shown.shape[1], shown.shape[0]), orientation
        assert image_header(path).size == (30, 20) and image_header(path).orientation == orientation
        np.testing.assert_array_equal(as_rgb(path).permute(1, 2, 0).numpy(), shown)


def test_labels_of_turned_photos_pair_as_drawn(tmp_path):
    """A photo stored 48x32 (WxH) with orientation 6 is shown 32x48: a label of the shown size is taken as it
    is, one of the stored size (drawn on the pixels as stored) is turned with its photo."""
    stored = np.random.default_rng(2).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    ids = (np.arange(32 * 48).reshape(32, 48) // 100 % 19).astype(np.uint8)  # drawn on the stored pixels
    for name, label in (("shown", np.ascontiguousarray(np.rot90(ids, -1))), ("stored", ids)):
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        (root / "labels").mkdir()
        with_orientation(root / "images" / "a.png", stored, 6)
        Image.fromarray(label).save(root / "labels" / "a.png")
        image, got = folder.build([str(root)])[0]
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), np.rot90(stored, -1))
        np.testing.assert_array_equal(got.numpy(), np.rot90(ids, -1), err_msg=name)


def predict_cli(checkpoint, out: Path, *inputs, options=()) -> dict[str, np.ndarray]:
    """``famix predict`` on the CPU; {file name: its pixels} of what it wrote."""
    main(["predict", str(checkpoint), *map(str, inputs), "--out", str(out), "--device", "cpu", *options])
    return {p.name: np.array(Image.open(p)) for p in sorted(out.glob("*.png"))}


def test_predict_of_a_16bit_png_is_that_of_its_8bit_equivalent(tmp_path, checkpoint):
    rgb = np.random.default_rng(3).integers(0, 65536, (40, 56, 3), dtype=np.uint16)
    rgb[:, :28] = np.linspace(0, 65535, 40 * 28 * 3).reshape(40, 28, 3).astype(np.uint16)
    grey = gradient16(40, 56)
    write_png16_rgb(tmp_path / "rgb.png", rgb)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    (tmp_path / "eight").mkdir()
    Image.fromarray(scaled16(rgb)).save(tmp_path / "eight" / "rgb.png")
    Image.fromarray(scaled16(grey)).save(tmp_path / "eight" / "grey.png")
    wide = predict_cli(checkpoint, tmp_path / "out16", tmp_path / "rgb.png", tmp_path / "grey.png")
    eight = predict_cli(checkpoint, tmp_path / "out8", tmp_path / "eight")
    assert sorted(wide) == sorted(eight) and len(wide) == 6
    for name in wide:
        np.testing.assert_array_equal(wide[name], eight[name], err_msg=name)
    assert wide["grey_overlay.png"].std() > 20  # the gradient shows through: not a white image


def test_predict_of_an_exif_photo_is_that_of_the_turned_pixels(tmp_path, checkpoint):
    """A JPEG with orientation 6 (and 8) gives what the same pixels turned by hand give, in every output: the
    overlay shows the photo as viewers do."""
    stored = np.random.default_rng(4).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    stored[:, :32] = 40  # a dark half: the turn shows in the predictions
    for orientation in (6, 8):
        photo = with_orientation(tmp_path / f"photo{orientation}.jpg", stored, orientation, quality=95)
        with Image.open(photo) as im:
            turned = np.ascontiguousarray(ROTATED[orientation](np.array(im.convert("RGB"))))
        (tmp_path / f"by_hand{orientation}").mkdir()
        Image.fromarray(turned).save(tmp_path / f"by_hand{orientation}" / photo.with_suffix(".png").name)
        assert image_size(photo) == (40, 64)
        got = predict_cli(checkpoint, tmp_path / f"out{orientation}", photo)
        by_hand = predict_cli(checkpoint, tmp_path / f"hand{orientation}", tmp_path / f"by_hand{orientation}")
        assert sorted(got) == sorted(by_hand) and len(got) == 3
        assert got[f"photo{orientation}_trainid.png"].shape == (64, 40)
        for name in got:
            assert got[name].shape[0] >= 64 and got[name].shape[1] == 40, name  # pictures: a legend below
            np.testing.assert_array_equal(got[name], by_hand[name], err_msg=name)
        overlay = got[f"photo{orientation}_overlay.png"][:64]
        assert not np.array_equal(overlay, np.ascontiguousarray(np.rot90(overlay, 2)))  # not symmetric
    # one call, batched by the sizes image_size reports: the turned photos and an upright one of their size
    Image.fromarray(np.ascontiguousarray(np.rot90(stored, 1))).save(tmp_path / "upright.png")
    photos = [tmp_path / "photo6.jpg", tmp_path / "upright.png", tmp_path / "photo8.jpg"]
    together = predict_cli(checkpoint, tmp_path / "together", *photos, options=["--batch-size", "4"])
    for orientation in (6, 8):
        alone = predict_cli(checkpoint, tmp_path / f"out{orientation}", tmp_path / f"photo{orientation}.jpg")
        for name, pixels in alone.items():
            np.testing.assert_array_equal(together[name], pixels, err_msg=name)


def test_images_smaller_than_the_network_are_padded(tmp_path, checkpoint):
    """tiny-rn's backbone needs 16 pixels a side (its output stride): a 1x1 and an 8x8 image are zero-padded
    at the bottom and right and their logits cropped back, in famix predict and the API."""
    rng = np.random.default_rng(5)
    images = {
        "one.png": rng.integers(0, 256, (1, 1, 3), np.uint8),
        "eight.png": rng.integers(0, 256, (8, 8, 3), np.uint8),
    }
    for name, pixels in images.items():
        Image.fromarray(pixels).save(tmp_path / name)
    got = predict_cli(checkpoint, tmp_path / "out", *(tmp_path / n for n in images))
    for name, pixels in images.items():
        stem = name[:-4]
        assert got[f"{stem}_trainid.png"].shape == pixels.shape[:2]
        assert got[f"{stem}_overlay.png"].shape[1:] == pixels.shape[1:]  # a legend strip below
    model = famix.load(checkpoint, device="cpu")
    assert model.network.min_size == 16
    for name, pixels in images.items():
        h, w = pixels.shape[:2]
        logits = model.predict_logits(pixels)
        assert logits.shape == (19, h, w)
        x = model_input(model.network, torch.from_numpy(pixels).permute(2, 0, 1)[None])  # [1, 3, h, w]
        with eval_mode(model.network), torch.no_grad():
            by_hand = model.network(F.pad(x, (0, 16 - w, 0, 16 - h)))[0, :, :h, :w]  # bottom and right
        torch.testing.assert_close(logits, by_hand)
        np.testing.assert_array_equal(model.predict(pixels), got[f"{name[:-4]}_trainid.png"])
    small = [images["one.png"], images["eight.png"], rng.integers(0, 256, (15, 3, 3), np.uint8)]
    assert [a.shape for a in model.predict(small)] == [(1, 1), (8, 8), (15, 3)]


def test_tiny_test_time_scales_and_empty_inputs(tmp_path, checkpoint):
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (32, 48, 3), np.uint8)).save(tmp_path / "a.png")
    got = predict_cli(checkpoint, tmp_path / "out", tmp_path / "a.png", options=["--scales", "0.01", "1"])
    assert got["a_trainid.png"].shape == (32, 48)
    model = famix.load(checkpoint, device="cpu")
    tiny = model.predict(np.zeros((32, 48, 3), np.uint8), tta=InferenceSettings(scales=(0.01,)))
    assert tiny.shape == (32, 48)
    ckpt = tmp_path / "run" / "best.pt"  # eval writes its results beside the checkpoint
    ckpt.parent.mkdir()
    ckpt.write_bytes(Path(checkpoint).read_bytes())
    main(["eval", str(ckpt), "--data", "synthetic:day:2:size=32", "--device", "cpu", "--scales", "0.01"])
    for empty in ([], (), np.zeros((0, 32, 32, 3), np.uint8)):
        with pytest.raises(ValueError, match="predict: give at least one image"):
            model.predict(empty)
        with pytest.raises(ValueError, match="predict: give at least one image"):
            model.predict_logits(empty)
    with pytest.raises(ValueError, match=r"the image has shape \(0, 0, 3\): no pixels"):
        model.predict(np.zeros((0, 0, 3), np.uint8))


def test_predict_refuses_an_unreadable_depth_in_one_line(tmp_path, checkpoint, capsys):
    Image.fromarray(np.full((8, 8), 300.0, np.float32)).save(tmp_path / "hdr.tif")
    (tmp_path / "out").mkdir()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(checkpoint), str(tmp_path / "hdr.tif"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code != 0 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("famix")]
    assert len(lines) == 1 and "hdr.tif is float32 with values in [300, 300]" in lines[0], err
    assert list((tmp_path / "out").iterdir()) == []
