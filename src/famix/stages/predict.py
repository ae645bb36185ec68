"""``famix predict``: segment images and videos (files, folders, globs) with a checkpoint or an ONNX file,
and write index / colour / overlay PNGs (colours of the model's label set) and videos.

What was written is recorded in ``<out>/predict-runs.json``, keyed by what decides it (the model file's and
every input's content, the test-time settings, the outputs asked for): the same command again finds its
files and writes nothing."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from famix.data.inputs import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, is_video, list_images
from famix.data.label_sets import LabelSet, from_names, parse
from famix.data.readers import image_size, read_image
from famix.data.trainids import CLASS_NAMES
from famix.engine import pretrained, servers
from famix.engine.amp import trained_precision
from famix.engine.checkpoint import checkpoint_amp, load_checkpoint, load_segmenter
from famix.engine.distributed import resolve_device, single_process
from famix.engine.exported import OnnxSegmenter
from famix.engine.inference import eval_mode, predict_ids
from famix.engine.outputs import check_folder
from famix.engine.runs import RunRecord, cached
from famix.engine.video import import_av, segment_video
from famix.engine.visualize import palette_image, render
from famix.io import atomic_write, file_fingerprint
from famix.progress import progress_bar
from famix.settings import PredictSettings

DEFAULT = PredictSettings()
CPU = PredictSettings(device="cpu")  # predict_paths' default: a model on the CPU


def _save_png_atomic(picture: np.ndarray | Image.Image, dst: Path) -> None:
    # Readers (and a crash) never see half a file.
    dst.parent.mkdir(parents=True, exist_ok=True)  # a server layout's sub-folders
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    atomic_write(dst, lambda tmp: image.save(tmp, format="PNG"))


def output_stems(paths: Sequence[Path]) -> list[str]:
    """The name each input's outputs start with: its stem, unique among ``paths``.

    Inputs sharing a stem keep their extension in the name (``a.png``, ``a.jpg`` -> ``a_png``, ``a_jpg``);
    the same file name in different folders is numbered in input order (``a_png``, ``a_png_2``).
    """
    by_stem: dict[str, int] = {}
    for p in paths:
        by_stem[p.stem] = by_stem.get(p.stem, 0) + 1
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        name = p.stem if by_stem[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower() or 'noext'}"
        seen[name] = seen.get(name, 0) + 1
        stems.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return stems


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, LabelSet, str]:
    """The model ``famix predict`` runs, read once: (a checkpoint's segmenter, or an ``.onnx`` file from
    ``famix export`` run by ONNX Runtime (:class:`famix.engine.exported.OnnxSegmenter`; needs
    ``famix[export]``); its label set (the colours of the outputs); the autocast it was trained with
    (``run.amp``; "off" for ONNX files, which compute in their own float32)).

    An ONNX model goes through the same :func:`predict_logits`, so ``--scale``/``--ensemble``/``--window``
    work wherever the sizes they produce fit the file (e.g. a fixed 512x512 file runs ``--window 512`` on
    images at least that large); sizes that do not fit raise ValueError naming the sizes it takes. An ONNX
    file's label set is in its metadata (files from before label sets: that of their class names).
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        model = OnnxSegmenter(path, device)
        meta = model.metadata
        if "label_set" in meta:
            labels = parse(json.loads(meta["label_set"]), f"the label set in {path}'s metadata")
        else:
            labels = from_names(json.loads(meta["class_names"]) if "class_names" in meta else CLASS_NAMES)
        return model, labels, "off"
    if path.suffix.lower() == ".pt2" or path.name.endswith(".torchscript.pt"):
        raise ValueError(
            f"{path} is an exported program / TorchScript file: famix predict takes a checkpoint or an .onnx "
            "file (load .pt2 with torch.export.load, TorchScript with torch.jit.load)"
        )
    ckpt = load_checkpoint(path)
    model, cfg = load_segmenter(ckpt, device=device, channels_last=True)
    return model, cfg.labels, checkpoint_amp(ckpt)


def _size_batches(paths: Sequence[Path], batch_size: int) -> list[list[int]]:
    # Indices into ``paths``: same-size images (in input order) chunked so each chunk stacks into one batch.
    groups: dict[tuple[int, int], list[int]] = {}
    for i, path in enumerate(paths):
        groups.setdefault(image_size(path), []).append(i)  # from the header: nothing decoded yet
    return [g[j : j + batch_size] for g in groups.values() for j in range(0, len(g), batch_size)]


def predict_paths(
    model: torch.nn.Module,
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    settings: PredictSettings = CPU,
    amp_dtype: torch.dtype | None = None,
    labels: LabelSet | None = None,
    destinations: Sequence[Path] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Segment every image and video in ``paths`` as ``settings`` say (its ``tta``, ``outputs``,
    ``video_output``, ``batch_size`` and ``device``; ``amp_dtype``: the autocast resolved from its ``amp``)
    and write the results to ``out_dir``.

    Images: ``<stem>_trainid.png`` (the class indices as a palette PNG: ``np.asarray(Image.open(p))`` reads
    the indices, viewers show the colours of ``labels``, the model's label set; default the 19 Cityscapes
    classes'), ``<stem>_color.png`` (those colours) and ``<stem>_overlay.png`` as selected by ``outputs``
    (``<stem>``: see :func:`output_stems`); colour and overlay pictures (images and videos) have a legend
    strip below them (the swatch and name of each class present, :func:`famix.engine.visualize.legend`)
    unless ``settings.legend`` is False. Images are read
    as viewers show them (:func:`famix.data.readers.read_image`: EXIF orientation applied, 16-bit pixels
    scaled to 8 bits), so every output has that orientation and size (the overlay draws on the turned
    image); images smaller than the network are zero-padded and cropped back by it. Images of equal size
    (:func:`famix.data.readers.image_size`, turned) are segmented ``batch_size`` at a time; sizes may differ
    between images. Videos
    (:data:`VIDEO_EXTENSIONS`, needs PyAV): ``<stem>_<video_output>.mp4``, see
    :func:`famix.engine.video.segment_video`; a video frame's legend lists the classes present in that
    frame, in a strip as tall as one of every class (every frame has one size). ``destinations``: one file
    per input (images only) for the one kind in ``outputs`` instead (a test server's layout,
    ``engine.servers``: plain greyscale id PNGs, as the servers take them). Returns the written paths
    in input order.
    """
    s, device = settings, resolve_device(settings.device)
    outputs, batch_size, video_output = s.outputs, s.batch_size, s.video_output
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in paths]
    stems = output_stems(paths)
    images = [i for i, p in enumerate(paths) if not is_video(p)]
    videos = [i for i, p in enumerate(paths) if is_video(p)]
    if videos:
        import_av()  # a missing PyAV fails before the images are done, not after
    segment = functools.partial(predict_ids, model, device=device, tta=s.tta, amp_dtype=amp_dtype)
    labels = labels or from_names(CLASS_NAMES)
    draw = functools.partial(render, labels=labels, legend=s.legend)
    written: dict[int, list[Path]] = {}  # input index -> its outputs
    with eval_mode(model), torch.inference_mode():
        bar = progress_bar(total=len(images), desc="predict", disable=not progress or not images)
        for chunk in _size_batches([paths[i] for i in images], batch_size):
            chunk = [images[j] for j in chunk]
            batch = torch.stack([read_image(paths[i]) for i in chunk])  # [B, 3, H, W] uint8
            for i, image, ids in zip(chunk, batch, segment(batch), strict=True):
                written[i] = (
                    [Path(destinations[i])]
                    if destinations
                    else [out / f"{stems[i]}_{kind}.png" for kind in outputs]
                )
                for kind, dst in zip(outputs, written[i], strict=True):
                    picture = draw(kind, image, ids)
                    if kind == "trainid" and not destinations:  # a server takes plain greyscale ids
                        picture = palette_image(picture, labels)
                    _save_png_atomic(picture, dst)
            bar.update(len(chunk))
        bar.close()
        for i in videos:
            dst = out / f"{stems[i]}_{video_output}.mp4"
            frame = functools.partial(draw, same_size=True)  # one frame size, whatever classes a frame shows
            written[i] = [segment_video(paths[i], dst, segment, video_output, batch_size, progress, frame)]
    return [p for i in range(len(paths)) for p in written[i]]


RECORD = "predict-runs.json"


def run(
    checkpoint: str | Path,
    inputs: Sequence[str],
    out: str | Path,
    settings: PredictSettings = DEFAULT,
    progress: bool = True,
    say=print,
) -> list[Path]:
    """Segment every image and video ``inputs`` name into ``out`` as ``settings`` say; returns the files
    written. The inputs and the model are checked before the first image is segmented; a finished prediction
    with the same record (and its files still there) returns at once. ``settings.server``: write the
    submission layout of that test server instead (``engine.servers``: cityscapes, acdc; one file per
    image)."""
    single_process("famix predict", "every rank would write the same files")
    s, server = settings, settings.server
    dev = resolve_device(s.device)
    check_folder(out, "--out")
    paths = list_images(inputs, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
    model, labels, trained_amp = load_model(checkpoint, dev)  # labels: the colours of the outputs
    if server is not None:
        if any(is_video(p) for p in paths):
            raise ValueError(
                f"--server {server}: test servers take images; "
                f"{next(p for p in paths if is_video(p))} is a video"
            )
        destinations = servers.destinations(server, paths, Path(out))
        s = dataclasses.replace(s, outputs=(servers.KINDS[server],))
    else:
        destinations = None
    if ("labelid" in s.outputs or server is not None) and labels.names != list(CLASS_NAMES):
        raise ValueError(
            f"{'--server ' + server if server else '--outputs labelid'} writes Cityscapes ids, but the model "
            f"predicts {labels.describe()}: it needs a model of the 19 Cityscapes classes"
        )
    # one precision per checkpoint (ONNX files compute in their own float32)
    amp_name, dtype = trained_precision(s.amp, trained_amp, dev)
    record = RunRecord(
        "predict",
        {
            "tta": s.tta.record(),
            "amp": amp_name,
            "outputs": list(s.outputs),
            "video_output": s.video_output,
            **({"server": server} if server else {"legend": s.legend}),
        },
        {
            "model": pretrained.fingerprint(checkpoint),
            "inputs": [f"{p}={file_fingerprint(p)}" for p in paths],
        },
    )

    def predict() -> dict:
        written = predict_paths(model, paths, out, s, dtype, labels, destinations, progress)
        return {"written": [str(p) for p in written]}

    def present(result: dict) -> bool:
        return all(Path(p).is_file() for p in result["written"])

    done = cached(Path(out) / RECORD, record, predict, say=lambda _: say(f"famix predict: {out} holds these "
                  "predictions already: nothing to do"), valid=present)  # fmt: skip
    return [Path(p) for p in done["written"]]
