"""Label encodings of the benchmark datasets and their maps to the 19 Cityscapes trainIds.

Each encoding names how a label file is read (see ``readers``), a 256-entry lookup table
raw id -> trainId (255 = ignore) and the set of raw ids the dataset documents, so that
``famix datasets check`` can flag values that belong to no known class (a wrong file, a
colour image, a different label release).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from famix.data.labels import IGNORE_INDEX, NUM_CLASSES, cityscapes_id_to_train_id

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
        return lut[raw]
    # 16-bit labels: every LUT maps 255 to ignore, so clamping sends out-of-range ids to ignore too.
    return lut[np.minimum(raw, 255).astype(np.intp)]
