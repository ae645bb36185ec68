"""``famix predict``: segment images and videos (files, folders, globs) with a checkpoint or an ONNX file.

What was written is recorded in ``<out>/predict-runs.json``, keyed by what decides it (the model file's and
every input's content, the test-time settings, the outputs asked for): the same command again finds its
files and writes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from famix.data.labels import CLASS_NAMES
from famix.engine import pretrained, servers
from famix.engine.amp import amp_dtype
from famix.engine.distributed import resolve_device, single_process
from famix.engine.inference import PLAIN, InferenceSettings
from famix.engine.outputs import check_folder
from famix.engine.predict import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    is_video,
    list_images,
    load_model,
    predict_paths,
)
from famix.engine.runs import RunRecord, cached, file_fingerprint
from famix.engine.visualize import DEFAULT_OUTPUTS

RECORD = "predict-runs.json"


def run(
    checkpoint: str | Path,
    inputs: Sequence[str],
    out: str | Path,
    tta: InferenceSettings = PLAIN,
    outputs: Sequence[str] = DEFAULT_OUTPUTS,
    device: str = "auto",
    amp: str | None = None,
    batch_size: int = 4,
    video_output: str = "overlay",
    progress: bool = True,
    say=print,
    server: str | None = None,
) -> list[Path]:
    """Segment every image and video ``inputs`` name into ``out``; returns the files written. The inputs
    and the model are checked before the first image is segmented; a finished prediction with the same
    record (and its files still there) returns at once. ``server``: write the submission layout of that
    test server instead (``engine.servers``: cityscapes, acdc; one file per image)."""
    single_process("famix predict", "every rank would write the same files")
    dev = resolve_device(device)
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
        outputs = [servers.KINDS[server]]
    else:
        destinations = None
    if ("labelid" in outputs or server is not None) and labels.names != list(CLASS_NAMES):
        raise ValueError(
            f"{'--server ' + server if server else '--outputs labelid'} writes Cityscapes ids, but the model "
            f"predicts {labels.describe()}: it needs a model of the 19 Cityscapes classes"
        )
    amp = amp or trained_amp  # one precision per checkpoint (ONNX files compute in their own float32)
    dtype = amp_dtype(amp, dev)
    record = RunRecord(
        "predict",
        {
            "tta": tta.record(),
            "amp": amp if dtype is not None else "off",
            "outputs": list(outputs),
            "video_output": video_output,
            **({"server": server} if server else {}),
        },
        {
            "model": pretrained.fingerprint(checkpoint),
            "inputs": [f"{p}={file_fingerprint(p)}" for p in paths],
        },
    )

    def predict() -> dict:
        written = predict_paths(
            model, paths, out, dev, tta, tuple(outputs), dtype, progress, batch_size, video_output, labels,
            destinations,
        )  # fmt: skip
        return {"written": [str(p) for p in written]}

    def present(result: dict) -> bool:
        return all(Path(p).is_file() for p in result["written"])

    done = cached(Path(out) / RECORD, record, predict, say=lambda _: say(f"famix predict: {out} holds these "
                  "predictions already: nothing to do"), valid=present)  # fmt: skip
    return [Path(p) for p in done["written"]]
