"""Test-server submissions: the file each test image's prediction goes to, in the layout a benchmark's
evaluation server takes (``famix predict --server NAME``), ready to zip.

- ``cityscapes``: one PNG of Cityscapes **labelIds** per test image, at its full resolution, named with
  the image's ``<city>_<seq>_<frame>`` prefix (``berlin_000000_000019_leftImg8bit.png`` ->
  ``berlin/berlin_000000_000019_leftImg8bit_labelIds.png``); the server matches files by that prefix, in
  any sub-folder (cityscapesScripts' ``evalPixelLevelSemanticLabeling.getPrediction``; the benchmark's
  submission page: labelIds, full resolution, a zip of at most 100 MB).
- ``acdc``: one PNG of **trainIds** per test image at 1920x1080, under ``labelTrainIds/`` (any sub-folder:
  famix writes ``labelTrainIds/<condition>/``), named with the image's ``<seq>_frame_<frame>`` prefix,
  every condition in one submission (the condition evaluated is chosen on the server's form). This is the
  format the same group's MUSES server documents (timbroed/MUSES#4) and ACDC users report (ysj9909/SoMA#8,
  w1oves/Rein#100); check ACDC's submission page before uploading.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

SERVERS = ("cityscapes", "acdc")
KINDS = {"cityscapes": "labelid", "acdc": "trainid"}  # what each server scores
CONDITIONS = ("fog", "night", "rain", "snow")
_CITYSCAPES = re.compile(r"^([a-z_]+)_(\d{6})_(\d{6})")
_ACDC = re.compile(r"^(\w+?_frame_\d{6})")


def destinations(server: str, images: Sequence[Path], out: Path) -> list[Path]:
    """The submission file of each test image (in order); an image the server would not know is an error."""
    if server not in SERVERS:
        raise ValueError(f"--server {server!r}: choose one of {', '.join(SERVERS)}")
    found = []
    for image in images:
        if server == "cityscapes":
            m = _CITYSCAPES.match(image.name)
            if m is None:
                raise ValueError(
                    f"--server cityscapes: {image} is not a Cityscapes image (expected "
                    "<city>_<seq>_<frame>_leftImg8bit.png, e.g. leftImg8bit/test/berlin/berlin_000000_000019_"
                    "leftImg8bit.png)"
                )
            found.append(out / m.group(1) / f"{image.stem}_labelIds.png")
        else:
            m = _ACDC.match(image.name)
            condition = next((c for c in CONDITIONS if c in image.parts), None)
            if m is None or condition is None:
                raise ValueError(
                    f"--server acdc: {image} is not an ACDC image (expected rgb_anon/<fog|night|rain|snow>/"
                    "test/<seq>/<seq>_frame_<frame>_rgb_anon.png)"
                )
            found.append(out / "labelTrainIds" / condition / f"{m.group(1)}.png")
    if len(set(found)) != len(found):
        twice = next(p for p in found if found.count(p) > 1)
        raise ValueError(
            f"--server {server}: two inputs would both be submitted as {twice}: give each image once"
        )
    return found
