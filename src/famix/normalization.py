"""How CLIP weights expect their images, and OpenAI's default: the one home of that fact.

A leaf that imports nothing (no torch): importing ``open_clip.constants`` would import all of open_clip and
torch with it, so OpenAI's values are written here, as open_clip writes them (``open_clip/constants.py``,
``OPENAI_DATASET_MEAN`` / ``OPENAI_DATASET_STD``); tests/test_normalization.py checks that they are equal.
"""

from __future__ import annotations

from typing import NamedTuple


class Normalization(NamedTuple):
    """How a CLIP's weights expect images: ``(x - mean) / std`` per RGB channel of [0, 1] images."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


# OpenAI's CLIP mean / std (open_clip.constants.OPENAI_DATASET_MEAN / OPENAI_DATASET_STD): the default of a
# weight whose origin famix cannot know, and of every checkpoint or file that names none.
OPENAI_NORMALIZATION = Normalization(
    (0.48145466, 0.4578275, 0.40821073),
    (0.26862954, 0.26130258, 0.27577711),
)
