"""A user's image inputs: files, folders (recursively, sorted) and glob patterns, expanded into one list of
files (``famix predict``, ``famix diagnose``, ``Segmenter.predict``); videos by their extension."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def is_video(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a video file (by its extension, :data:`VIDEO_EXTENSIONS`)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def list_images(
    inputs: Sequence[str | os.PathLike], extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> list[Path]:
    """Expand files, folders (recursively, sorted) and glob patterns into a de-duplicated file list.

    Explicitly named files are kept whatever their extension; folder and glob matches are filtered
    by ``extensions`` (lower case; pass ``IMAGE_EXTENSIONS + VIDEO_EXTENSIONS`` to include videos).
    An input that yields nothing raises FileNotFoundError naming it.
    """
    extensions = tuple(extensions)

    def wanted(q: Path) -> bool:
        return q.is_file() and q.suffix.lower() in extensions

    found: dict[Path, None] = {}  # ordered set
    for inp in inputs:
        p = Path(inp)
        if p.is_file():
            matches = [p]
        elif p.is_dir():
            matches = sorted(q for q in p.rglob("*") if wanted(q))
        else:
            matches = [q for q in map(Path, sorted(glob.glob(str(inp), recursive=True))) if wanted(q)]
        if not matches:
            raise FileNotFoundError(
                f"nothing found for input {str(inp)!r} (expected a file, a folder or a glob matching "
                f"{'/'.join(e[1:] for e in extensions)} files)"
            )
        found.update(dict.fromkeys(matches))
    return list(found)
