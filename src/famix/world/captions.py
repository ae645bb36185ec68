"""Captioned crops of the synthetic world in every style: the image-text pairs the tiny CLIP learns from.

A ``World`` holds scenes pre-rendered once (each in one of the 12 styles) so a training step only crops,
resizes and captions. A crop knows its style, its dominant class (most pixels, ignore excluded) and the
classes present in it; a caption names a style, a class, both or neither. Image i is a positive of
caption j when it has every attribute the caption names (``targets``), so the many duplicate (style,
class) pairs of a batch are not treated as negatives of each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open_clip
import torch
from torchvision.ops import roi_align

from famix.data.trainids import TRAIN_ID
from famix.data.transforms import normalize
from famix.progress import progress_bar
from famix.world.synthetic import DOMAINS, render

# The trainIds the synthetic world draws (the others never occur); captions and zero-shot use these.
WORLD_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "car",
)
_LUT = np.full(256, -1, np.int64)  # trainId -> index in WORLD_CLASSES (-1: ignore / absent)
_LUT[[TRAIN_ID[c] for c in WORLD_CLASSES]] = np.arange(len(WORLD_CLASSES))

# Scene seeds of the two splits live in disjoint ranges, far from the small seeds SyntheticDataset uses.
_SPLIT_BASE = {"train": 1_000_000_000, "eval": 2_000_000_000}
_SPLIT_STRIDE = 1_000_000

# Caption templates. The OpenAI ImageNet templates wrap "<style> <class>" exactly as style mining does
# (famix.style.prompts), so the text tower also learns the phrasing mining will feed it.
BOTH_TEMPLATES = ("a {s} photo of a {c}.", "a {c} in {s} style.", "a {s} {c}.", "{s} {c}")
STYLE_TEMPLATES = ("a {s} photo.", "a photo in {s} style.", "a {s} street scene.", "{s} style.", "{s}.")
CLASS_TEMPLATES = ("a photo of a {c}.", "a {c}.", "a close-up of a {c}.", "{c}")
PRESENT_TEMPLATES = ("a photo with a {c} in it.", "a {s} photo with a {c} in it.")
IMAGENET_TEMPLATES = tuple(open_clip.OPENAI_IMAGENET_TEMPLATES)
# caption kinds: style + dominant class, style only, dominant class only, a present class (style or not)
KINDS = ("both", "style", "class", "present")
# Their default shares: style is learnt fast, so most captions name the dominant class (short runs: +2.6
# points of class accuracy over (0.4, 0.15, 0.3, 0.15) at equal style accuracy).
KIND_SHARES = (0.4, 0.1, 0.4, 0.1)


@dataclass
class World:
    """Pre-rendered scenes: images uint8 [N, 3, S, S], labels uint8 [N, S, S] (trainIds), style index
    [N], and the labels as int8 indices into WORLD_CLASSES (-1: ignore), which crops count."""

    images: torch.Tensor
    labels: np.ndarray
    styles: np.ndarray
    classes: np.ndarray | None = None

    def __post_init__(self):
        if self.classes is None:
            self.classes = _LUT[self.labels].astype(np.int8)

    def __len__(self) -> int:
        return len(self.styles)


def scene_seed(split: str, seed: int, index: int) -> int:
    """Seed of scene ``index`` of a split; train and eval scenes never coincide for index < 1e6."""
    if not 0 <= index < _SPLIT_STRIDE:
        raise ValueError(f"scene index {index} outside [0, {_SPLIT_STRIDE})")
    return _SPLIT_BASE[split] + int(seed) * _SPLIT_STRIDE + index


def render_world(n: int, seed: int, split: str = "train", size: int = 128, progress: bool = False) -> World:
    """Render ``n`` scenes of ``split``; scene i is drawn in style i % 12, so styles are balanced."""
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    labels = np.empty((n, size, size), np.uint8)
    styles = np.arange(n) % len(DOMAINS)
    for i in progress_bar(range(n), desc=f"render {split}", disable=not progress, leave=False):
        image, labels[i] = render(scene_seed(split, seed, i), DOMAINS[styles[i]], (size, size))
        images[i] = torch.from_numpy(image).permute(2, 0, 1)
    return World(images, labels, styles)


@dataclass
class Crops:
    """Square crops: scene index, box (x0, y0, side) in pixels, flip, style, dominant class index into
    WORLD_CLASSES, present [B, K] (classes covering at least ``present_share`` of the crop) and share
    [B, K] (each class's fraction of the crop's labelled pixels)."""

    scene: np.ndarray
    box: np.ndarray
    flip: np.ndarray
    style: np.ndarray
    dominant: np.ndarray
    present: np.ndarray
    share: np.ndarray


def _box_around(rng, classes: np.ndarray, side: int) -> tuple[int, int]:
    """Top-left corner of a ``side`` crop centred on a random pixel of a random class of the scene."""
    s = classes.shape[0]
    ids = np.flatnonzero(np.bincount(classes.ravel() + 1, minlength=len(WORLD_CLASSES) + 1)[1:])
    k = rng.choice(ids)  # classes drawn uniformly, so rare ones get crops of their own
    ys, xs = np.nonzero(classes == k)
    j = rng.integers(len(ys))
    clip = lambda v: int(np.clip(v - side // 2, 0, s - side))  # noqa: E731
    return clip(xs[j]), clip(ys[j])


def sample_crops(
    world: World,
    rng: np.random.Generator,
    n: int,
    focus: float = 0.25,
    side: tuple[float, float] = (0.42, 1.0),
    focus_side: tuple[float, float] = (0.2, 0.5),
    present_share: float = 0.02,
    scenes: np.ndarray | None = None,
    flip: bool = True,
) -> Crops:
    """Draw ``n`` crops. A share ``focus`` are tight crops (``focus_side`` of the scene) centred on a
    class; the rest are uniform (``side`` of the scene, anywhere), as the probe used. ``scenes``: the
    scene of each crop (default: drawn at random); ``flip``: mirror half of them at random."""
    s = world.images.shape[-1]
    scene = rng.integers(len(world), size=n) if scenes is None else np.asarray(scenes)
    box = np.empty((n, 3), np.int64)
    dominant = np.empty(n, np.int64)
    share = np.zeros((n, len(WORLD_CLASSES)), np.float32)
    focused = rng.random(n) < focus
    for i in range(n):
        lo, hi = focus_side if focused[i] else side
        w = int(round(rng.uniform(lo, hi) * s))
        label = world.classes[scene[i]]
        if focused[i]:
            x, y = _box_around(rng, label, w)
        else:
            x, y = (int(v) for v in rng.integers(0, s - w + 1, size=2))
        box[i] = x, y, w
        counts = np.bincount(label[y : y + w, x : x + w].ravel() + 1, minlength=len(WORLD_CLASSES) + 1)
        counts = counts[1:]  # drop ignore
        dominant[i] = counts.argmax()
        share[i] = counts / max(counts.sum(), 1)
    present = (share > 0) & (share >= present_share)
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
    return Crops(scene, box, flips, world.styles[scene], dominant, present, share)


def crop_images(world: World, crops: Crops, size: int = 64) -> torch.Tensor:
    """The crops resized (area-averaged by roi_align's adaptive sampling) to ``size``, flipped, CLIP-
    normalised: float32 [B, 3, size, size]."""
    x0, y0, w = (torch.from_numpy(crops.box[:, i]).float() for i in range(3))
    rois = torch.stack([torch.arange(len(x0)).float(), x0, y0, x0 + w, y0 + w], 1)
    images = world.images[torch.from_numpy(crops.scene)].float()
    out = roi_align(images, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    flip = torch.from_numpy(crops.flip)
    out[flip] = out[flip].flip(-1)
    return normalize(out.clamp(0, 255) / 255)  # normalize() takes float images in [0, 1]


@dataclass
class Captions:
    """Texts and what each names: style index (-1: none), class index (-1: none), kind index (KINDS)."""

    texts: list[str]
    style: np.ndarray
    cls: np.ndarray
    kind: np.ndarray


def make_captions(
    crops: Crops, rng: np.random.Generator, kinds: tuple[float, ...] = KIND_SHARES, p_imagenet: float = 0.4
) -> Captions:
    """One caption per crop, true of that crop. ``kinds``: probabilities of KINDS; ``p_imagenet``: share
    of "both" and "class" captions phrased with an OpenAI ImageNet template instead of ours."""
    n = len(crops.scene)
    kind = rng.choice(len(KINDS), size=n, p=np.asarray(kinds) / np.sum(kinds))
    style, cls, texts = np.full(n, -1), np.full(n, -1), []
    for i in range(n):
        k, s = KINDS[kind[i]], DOMAINS[crops.style[i]]
        if k == "present" and not crops.present[i].any():
            k, kind[i] = "style", KINDS.index("style")  # a crop of ignore pixels only names no class
        if k == "present":
            c = int(rng.choice(np.flatnonzero(crops.present[i])))
            template = PRESENT_TEMPLATES[rng.integers(len(PRESENT_TEMPLATES))]
            style[i] = crops.style[i] if "{s}" in template else -1
        else:
            c = int(crops.dominant[i])
            style[i] = crops.style[i] if k in ("both", "style") else -1
            template = {"both": BOTH_TEMPLATES, "style": STYLE_TEMPLATES, "class": CLASS_TEMPLATES}[k]
            template = template[rng.integers(len(template))]
        cls[i] = c if k != "style" else -1
        name = WORLD_CLASSES[c]
        if k in ("both", "class") and rng.random() < p_imagenet:
            texts.append(
                IMAGENET_TEMPLATES[rng.integers(len(IMAGENET_TEMPLATES))](
                    f"{s} {name}" if k == "both" else name
                )
            )
        else:
            texts.append(template.format(s=s, c=name))
    return Captions(texts, style, cls, kind)


def targets(crops: Crops, captions: Captions) -> torch.Tensor:
    """[B_images, B_captions] float 0/1: 1 where the image has every attribute the caption names."""
    style_ok = (captions.style[None] < 0) | (crops.style[:, None] == captions.style[None])
    dominant_ok = crops.dominant[:, None] == captions.cls[None]
    present_ok = crops.present[:, np.maximum(captions.cls, 0)]
    is_present = captions.kind[None] == KINDS.index("present")
    class_ok = (captions.cls[None] < 0) | np.where(is_present, present_ok, dominant_ok)
    return torch.from_numpy(style_ok & class_ok).float()
