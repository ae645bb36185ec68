"""``famix predict``: segment images and videos (files, folders, globs) with a checkpoint or an ONNX file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from famix.engine.amp import amp_dtype
from famix.engine.checks import check_folder
from famix.engine.distributed import resolve_device
from famix.engine.inference import PLAIN, InferenceSettings
from famix.engine.predict import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_images, load_model, predict_paths
from famix.engine.visualize import OUTPUT_KINDS


def run(
    checkpoint: str | Path,
    inputs: Sequence[str],
    out: str | Path,
    tta: InferenceSettings = PLAIN,
    outputs: Sequence[str] = OUTPUT_KINDS,
    device: str = "auto",
    amp: str = "bf16",
    batch_size: int = 4,
    video_output: str = "overlay",
    progress: bool = True,
) -> list[Path]:
    """Segment every image and video ``inputs`` name into ``out``; returns the files written. The inputs
    and the model are checked before the first image is segmented. Predictions are a function of the
    model and the image alone, so running it again writes the same files."""
    dev = resolve_device(device)
    check_folder(out, "--out")
    paths = list_images(inputs, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
    model = load_model(checkpoint, dev)
    return predict_paths(
        model, paths, out, dev, tta, tuple(outputs), amp_dtype(amp, dev), progress, batch_size, video_output
    )
