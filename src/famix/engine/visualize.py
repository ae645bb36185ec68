"""Pictures of predictions: class-index maps, colours, overlays on the image (images and videos), legends
(a swatch and the name of each class shown) and palette PNGs. Colours come from a ``[256, 3]`` palette
indexed by class (a label set's ``palette()``; default: Cityscapes')."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from famix.data.label_sets import LabelSet, from_names
from famix.data.trainids import CLASS_NAMES, NUM_CLASSES, palette, train_id_to_label_id
from famix.settings import OUTPUT_KINDS

# Legend layout, in pixels: margin around the strip and between rows, swatch side, swatch-to-name gap,
# space between one entry's name and the next swatch.
PAD, SWATCH, GAP, SPACE = 4, 12, 4, 12
BACKGROUND, INK, BORDER = (255, 255, 255), (20, 20, 20), (110, 110, 110)  # dark on light, a grey frame


def overlay(
    image: torch.Tensor | np.ndarray,
    train_ids: torch.Tensor | np.ndarray,
    alpha: float = 0.5,
    colours: np.ndarray | None = None,
    num_classes: int = NUM_CLASSES,
):
    """Blend the colours (``colours`` [256, 3], default Cityscapes') of class indices ``train_ids`` [H, W]
    over ``image`` uint8 [3, H, W].

    Returns uint8 [H, W, 3]. Pixels without a valid class (>= ``num_classes``, e.g. 255) keep the image.
    """
    table = palette() if colours is None else colours
    img = np.asarray(image).transpose(1, 2, 0).astype(np.float32)  # [H, W, 3]
    ids = np.asarray(train_ids).astype(np.int64)  # [H, W]
    painted = table[np.clip(ids, 0, 255)].astype(np.float32)  # [H, W, 3]
    blended = (1 - alpha) * img + alpha * painted
    valid = ((ids >= 0) & (ids < num_classes))[..., None]
    return np.where(valid, blended, img).round().clip(0, 255).astype(np.uint8)


@dataclass(frozen=True)
class LegendEntry:
    """One class drawn in a legend strip: its index, name, colour, and where it is in the strip's pixels:
    the swatch ``strip[top:bottom, left:right]`` (filled with exactly ``color``) and the name, drawn from
    column ``text_x`` (right of the swatch) on the same row."""

    index: int
    name: str
    color: tuple[int, int, int]
    top: int
    left: int
    bottom: int
    right: int
    text_x: int


def present_classes(ids: np.ndarray | torch.Tensor, num_classes: int) -> list[int]:
    """The class indices (< ``num_classes``; 255 = ignore is not a class) found in ``ids`` [..., H, W],
    ascending (label-set order)."""
    counts = np.bincount(np.asarray(ids).astype(np.int64).ravel(), minlength=256)
    return [int(k) for k in np.flatnonzero(counts[:num_classes])]


@functools.cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()  # Pillow's own font: nothing downloaded


@dataclass(frozen=True)
class _Layout:
    places: tuple[tuple[int, int, int], ...]  # (row, swatch left, name x) per entry
    pad: int  # margin: the first row's top and the first swatch's left
    side: int  # swatch side
    row_h: int  # row pitch
    height: int  # strip height


@functools.cache
def _layout(names: tuple[str, ...], width: int) -> _Layout:
    """Where each of ``names`` goes in a strip ``width`` wide. Entries go left to right and wrap to a new
    row when the next one would pass the right margin (an entry wider than the strip gets a row of its
    own; its name is cut at the edge)."""
    font, draw = _font(), ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = min(PAD, max(0, (width - 1) // 2))  # narrow pictures: smaller margins, then a smaller swatch
    side = max(1, min(SWATCH, width - 2 * pad))
    line = int(draw.textbbox((0, 0), "Ag", font=font)[3])
    row_h = max(side, line) + pad
    places, row, x = [], 0, pad
    for name in names:
        w = side + GAP + int(np.ceil(draw.textlength(name, font=font)))
        if x > pad and x + w > width - pad:
            row, x = row + 1, pad
        places.append((row, x, x + side + GAP))
        x += w + SPACE
    return _Layout(tuple(places), pad, side, row_h, pad + (row + 1) * row_h)


def legend(
    ids: np.ndarray | torch.Tensor, labels: LabelSet, width: int, min_height: int = 0
) -> tuple[np.ndarray, list[LegendEntry]]:
    """A legend strip for class indices ``ids`` [..., H, W]: for each class of ``labels`` present in
    ``ids``, in label-set order, a filled ``SWATCH`` x ``SWATCH`` square in the class's colour (framed by
    a 1-pixel grey line outside it) and the class name right of it, dark on white, in Pillow's default font.

    Returns (uint8 [h, width, 3], the entries drawn with their positions); h fits the rows of entries (at
    least one row), and at least ``min_height``. The layout depends only on the names and ``width``.
    """
    classes = present_classes(ids, len(labels))
    names, colours = labels.names, labels.colors()
    at = _layout(tuple(names[k] for k in classes), width)
    canvas = Image.new("RGB", (width, max(at.height, min_height)), BACKGROUND)
    draw, font = ImageDraw.Draw(canvas), _font()
    line = int(draw.textbbox((0, 0), "Ag", font=font)[3])
    entries = []
    for k, (row, left, text_x) in zip(classes, at.places, strict=True):
        top, colour = at.pad + row * at.row_h, (int(colours[k][0]), int(colours[k][1]), int(colours[k][2]))
        draw.rectangle((left - 1, top - 1, left + at.side, top + at.side), outline=BORDER)
        draw.rectangle((left, top, left + at.side - 1, top + at.side - 1), fill=colour)
        draw.text((text_x, top + (at.side - line) // 2), names[k], fill=INK, font=font)
        entries.append(LegendEntry(k, names[k], colour, top, left, top + at.side, left + at.side, text_x))
    return np.asarray(canvas), entries


def legend_height(labels: LabelSet, width: int) -> int:
    """The height of a legend listing every class of ``labels`` at ``width``: the tallest a legend of any
    prediction gets (video frames use it so every frame has one size)."""
    return _layout(tuple(labels.names), width).height


def with_legend(
    picture: np.ndarray, ids: np.ndarray | torch.Tensor, labels: LabelSet, same_size: bool = False
) -> np.ndarray:
    """``picture`` uint8 [H, W, 3] with :func:`legend` of the classes in ``ids`` appended below it:
    [H + h, W, 3]. ``same_size``: the strip as tall as a legend of every class (:func:`legend_height`), so
    pictures of one size stay one size whatever classes they show."""
    width = picture.shape[1]
    strip, _ = legend(ids, labels, width, legend_height(labels, width) if same_size else 0)
    return np.concatenate([picture, strip], axis=0)


def palette_image(ids: np.ndarray, labels: LabelSet) -> Image.Image:
    """Class indices uint8 [H, W] as a palette ('P') image: the pixels are the indices (read back unchanged
    by ``np.asarray(Image.open(path))``), the palette the colours of ``labels`` (255 = ignore: black)."""
    image = Image.fromarray(np.asarray(ids, dtype=np.uint8), mode="L").convert("P")
    image.putpalette(labels.palette().reshape(-1).tolist())
    return image


def render(
    kind: str,
    image: torch.Tensor,
    ids: np.ndarray,
    labels: LabelSet | None = None,
    legend: bool = False,
    same_size: bool = False,
) -> np.ndarray:
    """One output picture of class indices ``ids`` [H, W] uint8: "trainid" [H, W] (the indices), "color" or
    "overlay" [H, W, 3] in the colours of ``labels`` (default: the 19 Cityscapes classes), with
    :func:`with_legend` below when ``legend`` ([H + h, W, 3]; ``same_size``: see there), "labelid" [H, W]
    (the Cityscapes labelIds of a 19-class model's trainIds)."""
    labels = labels or from_names(CLASS_NAMES)
    table = labels.palette()
    if kind == "trainid":
        return ids  # saved as a palette PNG (or mode L for a server)
    if kind == "labelid":
        return train_id_to_label_id()[ids]
    if kind == "color":
        picture = table[ids]
    elif kind == "overlay":
        picture = overlay(image, ids, colours=table, num_classes=len(labels))
    else:
        raise ValueError(f"unknown output {kind!r}; choose from {OUTPUT_KINDS}")
    return with_legend(picture, ids, labels, same_size) if legend else picture
