"""Reading images and label files, with errors that name the file and say what to do.

Label PNGs are read as indices: palette ('P') PNGs through ``np.array(Image.open(p))`` (never
``.convert('RGB')``, which would turn class indices into colours), and SYNTHIA's 16-bit
multi-channel PNGs through torchvision's PNG decoder (PIL keeps only the high byte of 16-bit RGB,
which silently turns every SYNTHIA class id into 0).
"""

from __future__ import annotations

import os
from pathlib import Path

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


def image_size(path: str | os.PathLike, kind: str = "image") -> tuple[int, int]:
    """(width, height) from the file header alone (no pixel decoding)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return im.size
    except _READ_ERRORS as err:
        raise _corrupt(path, kind, err) from err


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An RGB image file -> uint8 [3, H, W]: the one image reader of famix (datasets and ``famix predict``).
    Palette, greyscale and RGBA files are converted as PIL's ``convert("RGB")`` does (alpha dropped).

    PNGs (GTA5, SYNTHIA, Cityscapes, ACDC) go through torchvision's libpng decoder straight into a
    channel-first tensor (lossless: the same pixels as PIL, without PIL's decode-then-transpose copies);
    other formats (the JPEGs of BDD100K and Mapillary) through PIL, as the official code reads them.
    A missing file raises :class:`MissingDataError`, an unreadable one :class:`DatasetError` (both name it).
    """
    path = Path(path)
    if path.suffix.lower() == ".png":
        from torchvision.io import ImageReadMode, decode_png, read_file

        try:
            data = decode_png(read_file(str(path)), mode=ImageReadMode.RGB)
        except _READ_ERRORS:  # damaged, or another format under a .png name: PIL reads it or says why not
            data = None
        if data is not None and data.dtype == torch.uint8:
            return data
    try:
        with Image.open(path) as im:
            array = np.array(im.convert("RGB"))  # [H, W, 3]
    except _READ_ERRORS as err:
        raise _corrupt(path, "image", err) from err
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


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


def as_rgb(image, what: str = "image") -> torch.Tensor:
    """One image as uint8 [3, H, W]: a file path, a PIL image, an [H, W, C] uint8 array or a [C, H, W] uint8
    tensor, C = 3; grey (C = 1, or [H, W]) is repeated to RGB and RGBA (C = 4) drops its alpha, as PIL's
    ``convert("RGB")``. Anything else is refused naming ``what`` and what it is."""
    if isinstance(image, str | os.PathLike):
        return read_image(image)
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        if image.dtype == object:
            raise ValueError(
                f"{what}: a numpy array of arrays (images of mixed sizes?): pass a list of images instead"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(image))
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
    if tensor.dtype != torch.uint8:
        raise ValueError(
            f"{what} is {tensor.dtype}, expected uint8 (0-255): convert it, e.g. (x * 255).round().to(uint8)"
        )
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    return tensor[:3].contiguous()
