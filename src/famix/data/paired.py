"""The dataset class shared by every benchmark loader, and size screening of image/label pairs.

Items are (image uint8 [3, H, W], label uint8 [H, W] of trainIds, 255 = ignore).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from famix.data.folder import DatasetError, Pair
from famix.data.labels import to_train_ids
from famix.data.readers import image_size, read_image, read_raw_label
from famix.data.transforms import EvalTransform


def mismatch_message(pair: Pair, image_wh: tuple[int, int], label_wh: tuple[int, int]) -> str:
    return (
        f"label {pair.label} is {label_wh[0]}x{label_wh[1]} (WxH) but its image {pair.image} is "
        f"{image_wh[0]}x{image_wh[1]}. Re-download the pair, or set the dataset option mismatch=skip "
        "(drop such pairs, counted) or mismatch=resize (resize the label, nearest)."
    )


def screen_sizes(
    pairs: Sequence[Pair],
    mismatch: str,
    keep_size: tuple[int, int] | None = None,
    name: str = "dataset",
) -> tuple[list[Pair], list[tuple[Path, str]]]:
    """Read the image and label headers of every pair (no pixel decoding) and drop what does not fit.

    ``mismatch='skip'`` drops pairs whose label and image sizes differ (RobustNet's rule for GTA5),
    ``'error'`` raises naming the first such pair, ``'resize'`` keeps them (the label is resized when
    read). ``keep_size=(H, W)`` also drops images of any other size (FAMix's ACDC fog filter).
    Returns (kept pairs, [(file, reason) for each dropped pair]).
    """
    kept, dropped, n_bad = [], [], 0
    for pair in pairs:
        image_wh = image_size(pair.image)
        if keep_size is not None and image_wh != (keep_size[1], keep_size[0]):
            dropped.append((pair.image, f"size {image_wh[0]}x{image_wh[1]} is not the protocol's"))
            continue
        if mismatch != "resize":
            label_wh = image_size(pair.label, "label")
            if label_wh != image_wh:
                if mismatch == "error":
                    raise DatasetError(f"{name}: " + mismatch_message(pair, image_wh, label_wh))
                dropped.append((pair.label, mismatch_message(pair, image_wh, label_wh)))
                n_bad += 1
                continue
        kept.append(pair)
    if n_bad:
        warnings.warn(
            f"{name}: skipped {n_bad} image/label pair(s) of different sizes, e.g. {dropped[0][0]}; "
            "set mismatch=error to stop instead, or mismatch=resize to keep them",
            stacklevel=2,
        )
    return kept, dropped


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
            raise DatasetError(f"{name}: no image/label pairs left to load (skipped {len(skipped)})")
        self.name, self.pairs, self.mismatch = name, list(pairs), mismatch
        self.eval_transform, self.skipped = eval_transform, list(skipped)
        self.spec = name

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[torch.Tensor, np.ndarray]:
        """(image uint8 [3, H, W], trainIds uint8 [H, W]) before the evaluation transform."""
        pair = self.pairs[index]
        image = read_image(pair.image)
        label = to_train_ids(read_raw_label(pair.label, pair.encoding), pair.encoding)
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
