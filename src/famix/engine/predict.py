"""Inference on image files: load, predict trainIds, write trainId / colour / overlay PNGs."""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from famix.data.labels import NUM_CLASSES, colorize, palette
from famix.data.transforms import normalize
from famix.engine.evaluate import autocast_context, eval_mode, predict_logits

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
OUTPUT_KINDS = ("trainid", "color", "overlay")


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as an RGB uint8 tensor [3, H, W]; unreadable files raise ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"))  # [H, W, 3]; convert() forces a full decode
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(
            f"cannot read image {path}: {e}. Check that it is a valid image file (re-export or remove it)."
        ) from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


def list_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand files, folders (recursively, sorted) and glob patterns into a de-duplicated image list.

    Explicitly named files are kept whatever their extension; folder and glob matches are filtered
    by :data:`IMAGE_EXTENSIONS`. An input that yields nothing raises FileNotFoundError naming it.
    """
    found: dict[Path, None] = {}  # ordered set
    for inp in inputs:
        p = Path(inp)
        if p.is_file():
            matches = [p]
        elif p.is_dir():
            matches = sorted(q for q in p.rglob("*") if _is_image(q))
        else:
            matches = [q for q in map(Path, sorted(glob.glob(str(inp), recursive=True))) if _is_image(q)]
        if not matches:
            raise FileNotFoundError(
                f"no images found for input {str(inp)!r} (expected a file, a folder or a glob matching "
                f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files)"
            )
        found.update(dict.fromkeys(matches))
    return list(found)


def overlay(image: torch.Tensor | np.ndarray, train_ids: torch.Tensor | np.ndarray, alpha: float = 0.5):
    """Blend the Cityscapes colours of ``train_ids`` [H, W] over ``image`` uint8 [3, H, W].

    Returns uint8 [H, W, 3]. Pixels without a valid class (e.g. 255) keep the original image.
    """
    img = np.asarray(image).transpose(1, 2, 0).astype(np.float32)  # [H, W, 3]
    ids = np.asarray(train_ids).astype(np.int64)  # [H, W]
    colours = palette()[np.clip(ids, 0, 255)].astype(np.float32)  # [H, W, 3]
    blended = (1 - alpha) * img + alpha * colours
    valid = ((ids >= 0) & (ids < NUM_CLASSES))[..., None]
    return np.where(valid, blended, img).round().clip(0, 255).astype(np.uint8)


def _save_png_atomic(array: np.ndarray, dst: Path) -> None:
    # Temp name in the same folder so os.replace is an atomic rename: readers never see half a file.
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    # Same stem in different folders would overwrite each other's outputs: suffix repeats with _2, _3...
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        seen[p.stem] = seen.get(p.stem, 0) + 1
        stems.append(p.stem if seen[p.stem] == 1 else f"{p.stem}_{seen[p.stem]}")
    return stems


def _render(kind: str, image: torch.Tensor, ids: np.ndarray) -> np.ndarray:
    if kind == "trainid":
        return ids  # [H, W] uint8, saved as mode L
    if kind == "color":
        return colorize(ids)  # [H, W, 3]
    return overlay(image, ids)  # [H, W, 3]


def predict_paths(
    model: torch.nn.Module,
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    scale: float | None = None,
    ensemble: bool = False,
    outputs: Sequence[str] = OUTPUT_KINDS,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> list[Path]:
    """Predict every image in ``paths`` (one at a time, sizes may differ) and write PNGs to ``out_dir``.

    Writes ``<stem>_trainid.png`` (uint8 trainIds), ``<stem>_color.png`` (Cityscapes palette) and
    ``<stem>_overlay.png`` as selected by ``outputs``; returns the written paths in order.
    """
    unknown = set(outputs) - set(OUTPUT_KINDS)
    if unknown:
        raise ValueError(f"unknown outputs {sorted(unknown)}; choose from {OUTPUT_KINDS}")
    device = torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in paths]
    written: list[Path] = []
    with eval_mode(model), torch.inference_mode():
        items = zip(paths, _unique_stems(paths), strict=True)
        for path, stem in tqdm(items, total=len(paths), desc="predict", disable=not progress):
            image = load_image(path)  # [3, H, W] uint8
            x = normalize(image.to(device))[None]  # [1, 3, H, W]
            with autocast_context(device, amp_dtype):
                logits = predict_logits(model, x, scale, ensemble)  # [1, K, H, W]
            ids = logits[0].argmax(0).to(torch.uint8).cpu().numpy()  # [H, W]
            for kind in outputs:
                dst = out / f"{stem}_{kind}.png"
                _save_png_atomic(_render(kind, image, ids), dst)
                written.append(dst)
    return written
