"""Reading images and label files, with errors that name the file and say what to do.

Images (:func:`read_image`, :func:`image_size`, :func:`as_rgb`) are read as viewers show them: their EXIF
orientation applied, and 16-bit (or float [0, 1]) pixels scaled to 8 bits (:func:`to_uint8`), never clipped.
Label files hold class ids: they are read as stored, neither scaled nor turned (their PNGs carry no EXIF;
how a label pairs with a turned photo: ``paired.label_as_stored``).

Label PNGs are read as indices: palette ('P') PNGs through ``np.array(Image.open(p))`` (never
``.convert('RGB')``, which would turn class indices into colours), and SYNTHIA's 16-bit
multi-channel PNGs through torchvision's PNG decoder (PIL keeps only the high byte of 16-bit RGB,
which silently turns every SYNTHIA class id into 0).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from famix.data.errors import DatasetError, MissingDataError
from famix.data.trainids import ENCODINGS

_READ_ERRORS = (
    OSError,
    UnidentifiedImageError,
    SyntaxError,
    ValueError,
    RuntimeError,
    Image.DecompressionBombError,
)


def _corrupt(path: Path, kind: str, err: Exception) -> DatasetError:
    if not path.is_file():
        return MissingDataError(f"{kind} not found: {path}")
    other = "label" if kind == "image" else "image"
    return DatasetError(
        f"cannot read {kind} {path}: {err}. The file is truncated or not an image; re-download or "
        f"re-extract it, or remove it (from a dataset: together with its {other})."
    )


# EXIF orientation (1-8) -> the turn from the stored pixels to what viewers show, on the last two dims of an
# image [..., H, W]: PIL.ImageOps.exif_transpose's table (2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM,
# 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90; PIL's ROTATE_90 turns counter-clockwise, as
# torch.rot90 with k=1 on (H, W)).
_TURNS = {
    2: lambda x: x.flip(-1),
    3: lambda x: x.flip(-2, -1),
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-2, -1),
    6: lambda x: torch.rot90(x, -1, (-2, -1)),
    7: lambda x: x.transpose(-2, -1).flip(-2, -1),
    8: lambda x: torch.rot90(x, 1, (-2, -1)),
}
_ORIENTATION_TAG = 0x0112


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8) in an open image's header, 1 (as stored) without one or when it cannot be
    read. Nothing is decoded: a PNG's EXIF counts where the PNG specification puts it, before the pixel data
    (Pillow's ``PngImageFile.getexif`` would decode the whole image to look after it)."""
    try:
        value = Image.Image.getexif(im).get(_ORIENTATION_TAG, 1)
    except Exception:  # a malformed EXIF block: the pixels as stored, as viewers show them
        return 1
    return value if isinstance(value, int) and value in _TURNS else 1


def _stored_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) of an open image as stored: Pillow reports TIFFs turned already (and turns their
    pixels when loading), so theirs come from the TIFF tags."""
    tags = getattr(im, "tag_v2", None) if im.format == "TIFF" else None
    if tags is not None and 256 in tags and 257 in tags:  # ImageWidth, ImageLength
        return int(tags[256]), int(tags[257])
    return im.size


def orient(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """``pixels`` [..., H, W] as stored -> as viewers show them under EXIF ``orientation`` (1-8; 5-8 swap H
    and W), contiguous. The turn :func:`read_image` applies to every image file."""
    turn = _TURNS.get(orientation)
    return pixels if turn is None else turn(pixels).contiguous()


class Header(NamedTuple):
    """What an image file's header says: ``size`` (width, height) as stored, and its EXIF ``orientation``
    (1: shown as stored; 5-8: shown turned by a quarter, width and height swapped)."""

    size: tuple[int, int]
    orientation: int

    @property
    def shown(self) -> tuple[int, int]:
        """(width, height) as viewers show the image (and :func:`read_image` returns it)."""
        return self.size[::-1] if self.orientation >= 5 else self.size


def image_header(path: str | os.PathLike, kind: str = "image") -> Header:
    """The :class:`Header` of an image file, from the header alone (no pixel decoding)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return Header(_stored_size(im), _orientation(im))
    except _READ_ERRORS as err:
        raise _corrupt(path, kind, err) from err


def image_size(path: str | os.PathLike, kind: str = "image") -> tuple[int, int]:
    """(width, height) from the file header alone (no pixel decoding): of an image, as viewers show it (its
    EXIF orientation applied, as :func:`read_image` does); of a label (``kind="label"``), as stored."""
    header = image_header(path, kind)
    return header.shown if kind == "image" else header.size


def _depth_error(what: str, detail: str) -> str:
    return (
        f"{what} {detail}: famix reads 8-bit images, 16-bit ones (scaled to 8 bits) and float ones in [0, 1] "
        "(scaled by 255)"
    )


def _scale16(pixels: torch.Tensor) -> torch.Tensor:
    # 16-bit values (uint16, or int32 holding 0-65535) -> the nearest 8-bit ones, round(v * 255 / 65535)
    return ((pixels.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)


def to_uint8(pixels: torch.Tensor, what: str = "image") -> torch.Tensor:
    """Pixels of any depth famix reads -> uint8, the one rule of image files, PIL images and (uint8 / uint16)
    arrays and tensors: uint8 as they are; uint16 (16-bit PNG, TIFF, PIL's ``I;16``) scaled to the nearest
    8-bit value, ``round(v * 255 / 65535)`` (``v * 257`` -> ``v``: an 8-bit image widened to 16 bits reads
    back exactly; ``v >> 8``, PIL's and libpng's cut, is up to one level darker); floats in [0, 1] (float
    files) times 255, rounded (half to even). Anything else (other integer types, floats outside [0, 1], NaN)
    raises ValueError naming ``what``, what it holds and what famix reads."""
    if pixels.dtype == torch.uint8:
        return pixels
    if pixels.dtype == torch.uint16:
        return _scale16(pixels)
    if pixels.is_floating_point():
        values = pixels.double()
        if pixels.numel() and not torch.isfinite(values).all():
            raise ValueError(_depth_error(what, f"is {_name(pixels.dtype)} with NaN or infinite values"))
        if pixels.numel() and (values.min() < 0 or values.max() > 1):
            low, high = values.min().item(), values.max().item()
            raise ValueError(
                _depth_error(what, f"is {_name(pixels.dtype)} with values in [{low:g}, {high:g}]")
                + "; divide 0-255 values by 255"
            )
        return (values * 255).round().to(torch.uint8)
    raise ValueError(
        _depth_error(what, f"is {_name(pixels.dtype)}")
        + ": convert it, e.g. x.astype(np.uint8) for 0-255 values"
    )


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _pil_pixels(im: Image.Image, what: str) -> torch.Tensor:
    """An open PIL image's pixels as uint8 [3, H, W], as stored (no orientation). 8-bit modes (palette, grey,
    RGBA, CMYK...) through PIL's ``convert("RGB")`` (alpha dropped); 16-bit grey (``I;16*``) scaled by
    :func:`to_uint8`; 32-bit integer grey (``I``, which some Pillow versions give 16-bit PNGs) read as 16-bit,
    values above 65535 refused; float grey (``F``) read as [0, 1]."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        array = np.array(im)  # [H, W] (u)int16 of the file's byte order, int32 or float32
        array = array.astype(array.dtype.newbyteorder("="), copy=False)
        if im.mode == "I":
            low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
            if low < 0 or high > 65535:
                raise ValueError(
                    _depth_error(what, f"has 32-bit integer values in [{low}, {high}]")
                    + "; such images are read as 16-bit ones (0-65535)"
                )
            array = array.astype(np.uint16)
        grey = to_uint8(torch.from_numpy(np.ascontiguousarray(array)), what)  # [H, W]
        return grey.expand(3, -1, -1).contiguous()
    return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


def _decode_png(path: Path) -> torch.Tensor | None:
    """A PNG's pixels as uint8 [3, H, W] (16-bit PNGs scaled as :func:`to_uint8`) through torchvision's libpng
    decoder, or None when it cannot read the file (damaged, or another format under a .png name)."""
    from torchvision.io import ImageReadMode, decode_png, read_file

    try:
        data = decode_png(read_file(str(path)), mode=ImageReadMode.RGB)  # [3, H, W] uint8 or uint16
    except _READ_ERRORS:
        return None
    if data.dtype in (torch.uint16, torch.int32):  # a 16-bit PNG (int32: torchvision before uint16 tensors)
        return _scale16(data)
    return data if data.dtype == torch.uint8 else None


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file -> uint8 [3, H, W] as viewers show it: the one image reader of famix (datasets,
    ``famix predict``, the Python API's paths). Never for label files, whose values are class ids
    (:func:`read_raw_label`, :func:`read_color_label`).

    - Orientation: the EXIF orientation of the header (a phone photo's) is applied (:func:`orient`), so a
      mask comes out in the orientation the photo is shown in; :func:`image_size` reports that size.
    - Depth: 8-bit files are read exactly as they are. 16-bit ones (grey or RGB PNGs, ``I;16`` TIFFs) are
      scaled to the nearest 8-bit value, ``round(v * 255 / 65535)``; float TIFFs (PIL mode ``F``) must hold
      [0, 1] and are scaled by 255; anything else is refused naming the file (:func:`to_uint8`).
    - Palette, greyscale and RGBA files are converted as PIL's ``convert("RGB")`` does (alpha dropped).

    PNGs (GTA5, SYNTHIA, Cityscapes, ACDC) go through torchvision's libpng decoder straight into a
    channel-first tensor (lossless: the same pixels as PIL, without PIL's decode-then-transpose copies; and
    all 16 bits of a 16-bit RGB PNG, of which PIL keeps the high byte); other formats (the JPEGs of BDD100K
    and Mapillary) through PIL, as the official code reads them.
    A missing file raises :class:`MissingDataError`, an unreadable one :class:`DatasetError` (both name it).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            orientation = _orientation(im)  # the header's (image_size's)
            pixels = _decode_png(path) if path.suffix.lower() == ".png" else None
            if pixels is None:
                im.load()
                orientation = _orientation(im)  # what is left to do: Pillow turns TIFFs itself when loading
                pixels = _pil_pixels(im, f"image {path}")
    except ValueError as err:
        if str(err).startswith(f"image {path} "):  # a depth famix does not read (to_uint8)
            raise DatasetError(str(err)) from None
        raise _corrupt(path, "image", err) from err
    except _READ_ERRORS as err:
        raise _corrupt(path, "image", err) from err
    return orient(pixels, orientation)


def read_color_label(path: str | os.PathLike) -> np.ndarray:
    """A colour label file -> its colours uint8 [H, W, 3], as stored: neither scaled nor turned (a label's
    values are looked up among a label set's colours; 16-bit files keep the high byte, as PIL reads them)."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        from torchvision.io import ImageReadMode, decode_png, read_file

        try:
            data = decode_png(read_file(str(path)), mode=ImageReadMode.RGB)
        except _READ_ERRORS:
            data = None
        if data is not None and data.dtype == torch.uint8:
            return data.permute(1, 2, 0).numpy()
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # [H, W, 3]
    except _READ_ERRORS as err:
        raise _corrupt(path, "label", err) from err


def read_index_png(path: Path) -> np.ndarray:
    """An 8-bit palette or greyscale label PNG -> its indices, uint8 [H, W]."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DatasetError(
                    f"label {path} has PIL mode {im.mode!r}, expected an 8-bit palette ('P') or "
                    "greyscale ('L') PNG of class ids. Colour renderings (_color.png, colormaps/) are not "
                    "labels: point the dataset at the id masks described by `famix datasets`."
                )
            return np.array(im)
    except DatasetError:
        raise
    except _READ_ERRORS as err:
        raise _corrupt(path, "label", err) from err


def read_png16_channel0(path: Path) -> np.ndarray:
    """A 16-bit (or 8-bit) PNG -> channel 0 (SYNTHIA's class id), [H, W] uint16 or uint8."""
    from torchvision.io import ImageReadMode, decode_png, read_file

    try:
        data = decode_png(read_file(str(path)), mode=ImageReadMode.UNCHANGED)  # [C, H, W]
    except _READ_ERRORS as err:
        raise _corrupt(path, "label", err) from err
    return data[0].numpy()


_READERS = {"index8": read_index_png, "png16c0": read_png16_channel0}


def read_raw_label(path: Path, encoding: str) -> np.ndarray:
    """The raw ids of a label file [H, W] (unmapped), read as ``encoding`` requires."""
    return _READERS[ENCODINGS[encoding].reader](path)


_EXPECTED = (
    "expected uint8 (0-255) or uint16 (0-65535, scaled to 8 bits): convert it, e.g. "
    "(x * 255).round().to(uint8) for values in [0, 1]"
)


def as_rgb(image, what: str = "image") -> torch.Tensor:
    """One image as uint8 [3, H, W]: a file path (read by :func:`read_image`: EXIF orientation applied, as
    ``famix predict`` reads it), a PIL image (its pixels as they are: apply ``PIL.ImageOps.exif_transpose``
    first for the orientation viewers show), an [H, W, C] array or a [C, H, W] tensor, C = 1, 3 or 4; grey
    (C = 1, or [H, W]) is repeated to RGB and RGBA (C = 4) drops its alpha, as PIL's ``convert("RGB")``.
    Depths as in files (:func:`to_uint8`): uint8 as it is, uint16 (and PIL's ``I;16``) scaled to the nearest
    8-bit value; a PIL image of floats (mode ``F``) in [0, 1] times 255, as a float file. Arrays and tensors
    of floats (or any other type) are refused naming ``what`` and what it is: whether they hold [0, 1] or
    [0, 255] values only the caller knows."""
    if isinstance(image, str | os.PathLike):
        return read_image(image)
    if isinstance(image, Image.Image):
        return _pil_pixels(image, what)
    if isinstance(image, np.ndarray):
        if image.dtype == object:
            raise ValueError(
                f"{what}: a numpy array of arrays (images of mixed sizes?): pass a list of images instead"
            )
        if image.dtype.kind not in "biuf" or image.dtype.itemsize > 8:  # what torch cannot hold
            raise ValueError(f"{what} is a numpy array of {image.dtype}, {_EXPECTED}")
        native = image.astype(image.dtype.newbyteorder("="), copy=False)  # big-endian 16-bit, e.g.
        tensor = torch.from_numpy(np.ascontiguousarray(native))
        tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        tensor = tensor[None] if tensor.ndim == 2 else tensor
    else:
        raise TypeError(
            f"{what} is a {type(image).__name__}: pass a file path, a PIL image, an HxWx3 uint8 numpy array "
            "or a 3xHxW uint8 tensor"
        )
    layout = "HxWxC array" if isinstance(image, np.ndarray) else "CxHxW tensor"
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3, 4):
        raise ValueError(
            f"{what} has shape {tuple(image.shape)}: expected an image with 1, 3 or 4 channels ({layout}); "
            "a batch goes in as a list"
        )
    if not tensor.shape[1] or not tensor.shape[2]:
        raise ValueError(
            f"{what} has shape {tuple(image.shape)}: no pixels ({tensor.shape[1]}x{tensor.shape[2]}, HxW)"
        )
    if tensor.dtype not in (torch.uint8, torch.uint16):  # floats: [0, 1] or [0, 255]? the caller knows
        raise ValueError(f"{what} is {tensor.dtype}, {_EXPECTED}")
    tensor = to_uint8(tensor, what)
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    return tensor[:3].contiguous()
