"""The dataset class shared by every benchmark loader, and size screening of image/label pairs.

Items are (image uint8 [3, H, W], label uint8 [H, W] of trainIds, 255 = ignore).

Images are read as viewers show them (``readers.read_image``: EXIF orientation applied); label files carry
no orientation and are taken as drawn on the image as shown (annotation tools show photos turned), except
where only the stored orientation fits them: a label of the stored size of a quarter-turned (EXIF 5-8)
non-square image was drawn on the pixels as stored and is turned with its image (:func:`label_as_stored`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from famix.data.entry import SizeFilter
from famix.data.errors import DatasetError
from famix.data.readers import Header, image_header, image_size, orient, read_image, read_raw_label
from famix.data.scan import Pair
from famix.data.trainids import to_train_ids
from famix.data.transforms import EvalTransform


def _sizes(pair: Pair, image_wh: tuple[int, int], label_wh: tuple[int, int]) -> str:
    return (
        f"label {pair.label} is {label_wh[0]}x{label_wh[1]} (WxH) but its image {pair.image} is "
        f"{image_wh[0]}x{image_wh[1]}"
    )


def mismatch_message(pair: Pair, image_wh: tuple[int, int], label_wh: tuple[int, int]) -> str:
    return (
        f"{_sizes(pair, image_wh, label_wh)}. Re-download the pair, or set the dataset option mismatch=skip "
        "(drop such pairs, counted) or mismatch=resize (resize the label, nearest)."
    )


def label_as_stored(header: Header, label_wh: tuple[int, int]) -> bool:
    """Whether a label of ``label_wh`` (width, height) was drawn on its image's pixels as stored rather than
    as shown: only a quarter turn (EXIF orientation 5-8) of a non-square image tells them apart."""
    return header.shown != header.size and label_wh == header.size


SKIPPED = "mismatch=skip"  # how the reason of a pair dropped for its label's size starts


class Screened(NamedTuple):
    """What the loader's size screening does with a list of pairs: ``kept`` (in order), ``dropped``
    [(file, reason)] (the size filter; ``mismatch=skip``) and ``refused`` [message] (``mismatch=error``: the
    loader stops at the first)."""

    kept: list[Pair]
    dropped: list[tuple[Path, str]]
    refused: list[str]


def screen_pairs(
    pairs: Sequence[Pair],
    mismatch: str,
    keep_size: tuple[int, int] | None = None,
    size_filter: SizeFilter | None = None,
) -> Screened:
    """Read the image and label headers of every pair (no pixel decoding) and sort out what does not fit.

    ``keep_size=(H, W)`` drops images of any other size (``size_filter`` says why, e.g. FAMix's ACDC fog
    filter). Pairs whose label and image sizes differ are dropped with ``mismatch='skip'`` (RobustNet's
    rule for GTA5), refused with ``'error'`` and kept with ``'resize'`` (the label is resized when read).
    """
    kept, dropped, refused = [], [], []
    for pair in pairs:
        header = image_header(pair.image)
        image_wh = header.shown
        if keep_size is not None and image_wh != (keep_size[1], keep_size[0]):
            why = size_filter.reason(image_wh, keep_size) if size_filter else f"not of size {keep_size} (HxW)"
            dropped.append((pair.image, why))
            continue
        if mismatch != "resize":
            label_wh = image_size(pair.label, "label")
            if label_wh != image_wh and not label_as_stored(header, label_wh):
                if mismatch == "error":
                    refused.append(mismatch_message(pair, image_wh, label_wh))
                else:
                    why = f"{SKIPPED} drops pairs of different sizes ({_sizes(pair, image_wh, label_wh)}); "
                    dropped.append(
                        (pair.label, why + "pass mismatch=resize to keep them (label resized, nearest)")
                    )
                continue
        kept.append(pair)
    return Screened(kept, dropped, refused)


def screen_sizes(
    pairs: Sequence[Pair],
    mismatch: str,
    keep_size: tuple[int, int] | None = None,
    name: str = "dataset",
    size_filter: SizeFilter | None = None,
) -> tuple[list[Pair], list[tuple[Path, str]]]:
    """The loader's screening (:func:`screen_pairs`): raises at the first pair ``mismatch='error'`` refuses,
    warns about the pairs ``'skip'`` drops. Returns (kept pairs, [(file, reason) for each dropped pair])."""
    kept, dropped, refused = screen_pairs(pairs, mismatch, keep_size, size_filter)
    if refused:
        raise DatasetError(f"{name}: {refused[0]}")
    skipped = [file for file, why in dropped if why.startswith(SKIPPED)]
    if skipped:
        warnings.warn(
            f"{name}: skipped {len(skipped)} image/label pair(s) of different sizes, e.g. {skipped[0]}; "
            "set mismatch=error to stop instead, or mismatch=resize to keep them",
            stacklevel=2,
        )
    return kept, dropped


def nothing_left(name: str, dropped: Sequence[tuple[Path, str]]) -> str:
    """The error for a split whose every pair was dropped: how many, and why (with the option to change)."""
    if not dropped:
        return f"{name}: no image/label pairs left to load"
    file, why = dropped[0]
    return f"{name}: no image/label pairs left to load ({len(dropped)} dropped), e.g. {file}: {why}"


class PairedDataset(Dataset):
    """Image/label pairs read from disk, labels mapped to trainIds.

    ``skipped`` lists (file, reason) for pairs dropped when the dataset was built (size mismatches,
    ACDC fog filter); ``mismatch`` says what happens to a label of another size met when reading.
    """

    def __init__(
        self,
        name: str,
        pairs: Sequence[Pair],
        mismatch: str = "error",
        eval_transform: EvalTransform | None = None,
        skipped: Sequence[tuple[Path, str]] = (),
    ):
        if not pairs:
            raise DatasetError(nothing_left(name, skipped))
        self.name, self.pairs, self.mismatch = name, list(pairs), mismatch
        self.eval_transform, self.skipped = eval_transform, list(skipped)
        self.spec = name

    def __len__(self) -> int:
        return len(self.pairs)

    def read_label(self, pair: Pair) -> np.ndarray:
        """A pair's label file as trainIds uint8 [H, W] (through its encoding's map)."""
        return to_train_ids(read_raw_label(pair.label, pair.encoding), pair.encoding)

    def load(self, index: int) -> tuple[torch.Tensor, np.ndarray]:
        """(image uint8 [3, H, W], trainIds uint8 [H, W]) before the evaluation transform."""
        pair = self.pairs[index]
        image = read_image(pair.image)
        label = self.read_label(pair)
        if label.shape != tuple(image.shape[1:]):
            header = image_header(pair.image)
            if label_as_stored(header, label.shape[::-1]):  # drawn on the pixels as stored: turned too
                label = orient(torch.from_numpy(np.ascontiguousarray(label)), header.orientation).numpy()
        if label.shape != tuple(image.shape[1:]):
            if self.mismatch != "resize":
                image_wh, label_wh = (image.shape[2], image.shape[1]), label.shape[::-1]
                raise DatasetError(f"{self.name}: " + mismatch_message(pair, image_wh, label_wh))
            size = (image.shape[2], image.shape[1])
            label = np.array(Image.fromarray(label).resize(size, Image.NEAREST))
        return image, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(image uint8 [3, H, W], trainIds uint8 [H, W]; 255 = ignore)."""
        image, label = self.load(index)
        if self.eval_transform is not None:
            array, label = self.eval_transform(image.permute(1, 2, 0).numpy(), label)
            image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
        return image, torch.from_numpy(np.ascontiguousarray(label))
