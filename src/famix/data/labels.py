"""Cityscapes label set: the 19 trainIds every famix model predicts, their names, colours and id maps."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

# (trainId order) name, Cityscapes labelId, colour
_CLASSES: tuple[tuple[str, int, tuple[int, int, int]], ...] = (
    ("road", 7, (128, 64, 128)),
    ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)),
    ("fence", 13, (190, 153, 153)),
    ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)),
    ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)),
    ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)),
    ("bicycle", 33, (119, 11, 32)),
)

CLASS_NAMES: tuple[str, ...] = tuple(c[0] for c in _CLASSES)
NUM_CLASSES = len(CLASS_NAMES)
TRAIN_ID = {name: i for i, name in enumerate(CLASS_NAMES)}
# The text used for an ignore-dominant patch when mining (the official prompt for trainId 255).
IGNORE_PROMPT = "photo"


def cityscapes_id_to_train_id() -> np.ndarray:
    """A 256-entry uint8 lookup table: Cityscapes labelId -> trainId (255 for everything unmapped)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for train_id, (_, label_id, _) in enumerate(_CLASSES):
        lut[label_id] = train_id
    return lut


def palette() -> np.ndarray:
    """A [256, 3] uint8 colour table indexed by trainId (ignore and unused entries are black)."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for train_id, (_, _, colour) in enumerate(_CLASSES):
        pal[train_id] = colour
    return pal


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """[H, W] trainIds -> [H, W, 3] uint8 Cityscapes colours."""
    return palette()[train_ids]
