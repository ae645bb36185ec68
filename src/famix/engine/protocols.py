"""Evaluation protocols: the test-time settings each benchmark dataset is evaluated with, by name.

- ``paper`` (default): FAMix's, the official code's: full resolution (the loaders' own protocol: Mapillary
  resized to height 1536 and centre-crop-padded, GTA5 val centre-cropped), the user's test-time options.
- ``mmseg``: the mmsegmentation protocol of the Rein family (w1oves/Rein's
  ``configs/_base_/datasets/*_512x512.py`` test pipelines and the ``test_cfg`` of
  ``configs/_base_/models/rein_dinov2_mask2former.py``): each image resized
  to fit a box keeping its aspect ratio (``Resize(scale=(W, H), keep_ratio=True)``: Cityscapes and
  Mapillary 1024x512, BDD100K and GTA5 1280x720, ACDC 960x540), then 512-pixel sliding windows with stride
  341, logits resized back to the label's full resolution. The loaders' own resizing and cropping are
  turned off (``mapillary:...:size=none``, ``gta5:...:center_crop=none``). ``--flip`` and ``--scales``
  (mmseg's ``img_ratios``, relative to the fitted size) compose with it.

A protocol is test-time settings per dataset, nothing else: the same evaluation path computes every number.
Differences from mmsegmentation that remain: famix resizes the normalised image and the logits bilinearly
with ``align_corners=True`` (mmseg resizes the uint8 image with OpenCV and the logits with
``align_corners=False``), and Rein evaluates Mapillary on images and labels it halved beforehand
(``half/val_img``), famix on the full-resolution labels.
"""

from __future__ import annotations

import dataclasses

from famix.data.specs import parse_spec
from famix.settings import InferenceSettings

PROTOCOLS = ("paper", "mmseg")
MMSEG_FIT = {  # dataset -> the (W, H) box of its test Resize
    "cityscapes": (1024, 512),
    "mapillary": (1024, 512),
    "bdd100k": (1280, 720),
    "gta5": (1280, 720),
    "acdc": (960, 540),
}
MMSEG_WINDOW, MMSEG_STRIDE = 512, 341
# spec options that turn a loader's own test-time resizing off (mmseg resizes by its own rule)
MMSEG_OPTIONS = {"mapillary": "size=none", "gta5": "center_crop=none"}


def check(protocol: str, tta: InferenceSettings) -> None:
    """Refuse an unknown protocol, or test-time options a protocol sets itself."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if protocol == "mmseg":
        given = [
            o for o, v in (("--scale", tta.scale), ("--window", tta.window), ("--stride", tta.stride)) if v
        ]
        if given or tta.ensemble:
            raise ValueError(
                "--protocol mmseg sets the resize and the sliding window itself: drop "
                f"{', '.join(given) or '--ensemble'} (--flip and --scales compose with it)"
            )


def resolve(protocol: str, spec: str, tta: InferenceSettings) -> tuple[str, InferenceSettings]:
    """(the spec to build, the test-time settings) of dataset ``spec`` under ``protocol``."""
    check(protocol, tta)
    if protocol == "paper":
        return spec, tta
    parsed = parse_spec(spec)
    name, option = parsed.name, MMSEG_OPTIONS.get(parsed.name)
    if option and parsed.option(option.split("=")[0]) is None:
        spec = f"{spec}:{option}"
    settings = dataclasses.replace(tta, fit=MMSEG_FIT.get(name), window=MMSEG_WINDOW, stride=MMSEG_STRIDE)
    return spec, settings


def describe(protocol: str, tta: InferenceSettings, amp: str) -> str:
    """The line printed above a results table: protocol, test-time settings, precision."""
    extra = [f"scales {' '.join(f'{v:g}' for v in tta.factors())}"] if len(tta.factors()) > 1 else []
    extra += ["flip"] if tta.flip else []
    extra += [f"scale {tta.scale:g}"] if tta.scale not in (None, 1.0) and not tta.ensemble else []
    extra += [f"window {tta.window}" + (f" stride {tta.stride}" if tta.stride else "")] if tta.window else []
    what = {
        "paper": "full resolution (FAMix's protocol)",
        "mmseg": f"mmseg: fit to the dataset's box, {MMSEG_WINDOW}-pixel windows, stride {MMSEG_STRIDE}",
    }[protocol]
    return f"protocol {protocol}: {what}; test time: {', '.join(extra) or 'plain'}; precision: {amp}"
