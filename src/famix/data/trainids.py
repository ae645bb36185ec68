"""Labels: the 19 Cityscapes trainIds every famix model predicts (names, colours), and the label encodings
of the benchmark datasets with their maps to trainIds.

Each encoding names how a label file is read (see ``readers``), a 256-entry lookup table raw id -> trainId
(255 = ignore) and the set of raw ids the dataset documents, so that ``famix datasets check`` can flag
values that belong to no known class (a wrong file, a colour image, a different label release).
"""

from __future__ import annotations

from dataclasses import dataclass

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


def cityscapes_id_to_train_id() -> np.ndarray:
    """A 256-entry uint8 lookup table: Cityscapes labelId -> trainId (255 for everything unmapped)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for train_id, (_, label_id, _) in enumerate(_CLASSES):
        lut[label_id] = train_id
    return lut


def train_id_to_label_id() -> np.ndarray:
    """A 256-entry uint8 lookup table: trainId -> Cityscapes labelId (the ids of the Cityscapes test server);
    255 (and every other value) -> 0, "unlabeled"."""
    lut = np.zeros(256, dtype=np.uint8)
    for train_id, (_, label_id, _) in enumerate(_CLASSES):
        lut[train_id] = label_id
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


# SYNTHIA-RAND-CITYSCAPES class id -> trainId (datasets.md; void, parking-slot, road-work and
# lanemarking are ignored; terrain, truck and train are mapped although absent from the data).
# fmt: off
SYNTHIA_TO_TRAIN_ID = {
    1: 10, 2: 2, 3: 0, 4: 1, 5: 4, 6: 8, 7: 5, 8: 13, 9: 7, 10: 11, 11: 18,
    12: 17, 15: 6, 16: 9, 17: 12, 18: 14, 19: 15, 20: 16, 21: 3,
}

# Mapillary Vistas v1.2 class id (0-65) -> trainId, the FAMix mapping; every other id is ignored.
MAPILLARY_TO_TRAIN_ID = {
    13: 0, 24: 0, 41: 0,  # road, lane marking (general), manhole
    2: 1, 15: 1,  # curb, sidewalk
    17: 2, 6: 3, 3: 4,  # building, wall, fence
    45: 5, 47: 5,  # pole, utility pole
    48: 6, 50: 7,  # traffic light, traffic sign (front only)
    30: 8, 29: 9, 27: 10, 19: 11,  # vegetation, terrain, sky, person
    20: 12, 21: 12, 22: 12,  # bicyclist, motorcyclist, other rider -> rider
    55: 13, 61: 14, 54: 15, 58: 16, 57: 17, 52: 18,  # car, truck, bus, on rails, motorcycle, bicycle
}
# fmt: on


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut


@dataclass(frozen=True)
class LabelEncoding:
    """How one kind of label file is read and mapped.

    ``reader`` is ``"index8"`` (8-bit palette/grey PNG, value = id) or ``"png16c0"`` (16-bit
    multi-channel PNG, channel 0 = id); ``lut`` maps raw ids 0-255 to trainIds; ``known`` are the
    raw ids the dataset defines, plus 255, the ignore value of preprocessed copies (anything else in a
    file is reported by the checker).
    """

    name: str
    reader: str
    lut: np.ndarray
    known: frozenset[int]
    description: str


ENCODINGS: dict[str, LabelEncoding] = {
    "cityscapes": LabelEncoding(
        "cityscapes",
        "index8",
        cityscapes_id_to_train_id(),
        frozenset([*range(34), IGNORE_INDEX]),
        "Cityscapes labelIds 0-33 (8-bit; GTA5's palette index is the same id)",
    ),
    "trainid": LabelEncoding(
        "trainid",
        "index8",
        _lut({i: i for i in range(NUM_CLASSES)}),
        frozenset([*range(NUM_CLASSES), IGNORE_INDEX]),
        "trainIds 0-18 with 255 = ignore (8-bit)",
    ),
    "synthia": LabelEncoding(
        "synthia",
        "png16c0",
        _lut(SYNTHIA_TO_TRAIN_ID),
        frozenset([*range(23), IGNORE_INDEX]),
        "SYNTHIA class ids 0-22 in channel 0 of a 16-bit PNG",
    ),
    "mapillary": LabelEncoding(
        "mapillary",
        "index8",
        _lut(MAPILLARY_TO_TRAIN_ID),
        frozenset([*range(66), IGNORE_INDEX]),
        "Mapillary Vistas v1.2 class ids 0-65 (8-bit palette)",
    ),
}


def to_train_ids(raw: np.ndarray, encoding: str) -> np.ndarray:
    """Map raw ids [H, W] (any integer dtype) to uint8 trainIds [H, W]; ids > 255 become ignore."""
    lut = ENCODINGS[encoding].lut
    if raw.dtype == np.uint8:
        return np.take(lut, raw)
    # 16-bit labels: every LUT maps 255 to ignore, so clamping sends out-of-range ids to ignore too.
    return lut[np.minimum(raw, 255).astype(np.intp)]
