"""famix from Python: load a trained model (a checkpoint, a saved folder, a Hub id), segment images, share
it; and the stages of the recipe as functions that return what they wrote or measured.

    import famix
    model = famix.load("runs/gta5_rn50/best.pt")        # or "hf:OWNER/NAME", or a `famix save` folder
    labels = model.predict("street.png")               # [H, W] uint8 class indices at the image's size

The command line is a thin layer over the same stages (:mod:`famix.stages`).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

from famix.config import Config, ModelConfig
from famix.data.inputs import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, is_video, list_images
from famix.data.label_sets import LabelSet
from famix.data.readers import as_rgb, image_size, read_image
from famix.engine.checkpoint import checkpoint_precision, load_checkpoint, load_segmenter
from famix.engine.distributed import resolve_device
from famix.engine.evaluate import EvalResult
from famix.engine.inference import eval_mode, model_input, predict_ids, predict_logits
from famix.engine.video import import_av, open_video
from famix.engine.visualize import overlay, with_legend
from famix.settings import BenchmarkSettings, EvalSettings, ExportSettings, InferenceSettings
from famix.stages import adapt as adapt_stage
from famix.stages import benchmark as benchmark_stage
from famix.stages import evaluate as evaluate_stage
from famix.stages import export as export_stage
from famix.stages import mine as mine_stage
from famix.stages import report as report_stage
from famix.stages import share
from famix.stages import train as train_stage


class Segmenter:
    """A trained famix segmenter: :meth:`predict` class maps (or :meth:`predict_logits`) of images given as
    paths, PIL images, HxWx3 arrays or 3xHxW tensors, one or a list (sizes may differ; any size, from 1x1):
    uint8, or uint16 scaled to 8 bits as ``famix predict`` reads 16-bit files; paths in the orientation
    viewers show (``famix.data.readers.as_rgb``); and of folders, glob patterns and videos, as
    ``famix predict`` takes them.
    ``network`` is the ``torch.nn.Module`` (normalised images [B, 3, H, W] -> logits [B, K, H, W]);
    ``labels`` its label set (class names, colours)."""

    def __init__(
        self,
        network: torch.nn.Module,
        config: ModelConfig,
        checkpoint: dict,
        device: torch.device,
        source: str | os.PathLike | None = None,
    ):
        self.network, self.config, self.device, self.source = network, config, device, source
        self.labels: LabelSet = config.labels
        self.checkpoint = checkpoint  # what save_pretrained writes: weights, config, run record

    @property
    def class_names(self) -> list[str]:
        return self.labels.names

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"famix.Segmenter({self.config.backbone}, {self.labels.describe()}, device={self.device})"

    def to(self, device: str | torch.device) -> Segmenter:
        self.device = resolve_device(str(device))
        self.network.to(self.device)
        return self

    def predict(
        self,
        images,
        amp: str | None = None,
        batch_size: int = 4,
        tta: InferenceSettings | None = None,
        **options,
    ) -> np.ndarray | list[np.ndarray] | dict[Path, np.ndarray]:
        """Class-index maps (uint8, at each input's size) of what ``famix predict`` takes, with its test-time
        settings and the same maps:

        - one image (a path, a PIL image, an array or a tensor: see the class) -> [H, W];
        - a video file (by its extension, :data:`famix.data.inputs.VIDEO_EXTENSIONS`; needs PyAV)
          -> [T, H, W], one map per frame, its frames decoded and segmented as ``famix predict`` does;
        - a list of those -> a list, one map per input;
        - a folder (its images and videos, recursively, sorted) or a glob pattern (``"photos/*.jpg"``,
          ``"**"`` recursive), alone or in a list of paths -> ``{path: map}`` of the files they name, in
          ``famix predict``'s order (:func:`famix.data.inputs.list_images`: de-duplicated; an input that
          names nothing raises FileNotFoundError naming it).

        ``tta``, or its fields as keywords (:func:`inference_settings`: ``scale``, ``ensemble``, ``scales``,
        ``flip``, sliding ``window`` / ``stride``); autocast ``amp`` on CUDA (default the checkpoint's
        ``run.amp``); images of one size (and a video's frames) are segmented ``batch_size`` at a time, one
        host copy per batch (``famix predict``'s path). Every input is checked before the first is segmented;
        files are read one batch at a time."""
        tta = inference_settings(tta, options)

        def step(batch: torch.Tensor, dtype) -> np.ndarray:  # [B, 3, H, W] uint8 -> [B, H, W] uint8
            return predict_ids(self.network, batch, self.device, tta, dtype)

        return self._segment(images, amp, batch_size, step, np.stack)

    def predict_logits(
        self,
        images,
        amp: str | None = None,
        batch_size: int = 4,
        tta: InferenceSettings | None = None,
        **options,
    ) -> torch.Tensor | list[torch.Tensor] | dict[Path, torch.Tensor]:
        """:meth:`predict`'s logits, float on the CPU: [K, H, W] per image, [T, K, H, W] per video (all of its
        frames' logits in memory: mind long videos); the same inputs and result shapes."""
        tta = inference_settings(tta, options)

        def step(batch: torch.Tensor, dtype) -> torch.Tensor:  # [B, 3, H, W] uint8 -> [B, K, H, W] float
            x = model_input(self.network, batch.to(self.device))  # [B, 3, H, W]
            return predict_logits(self.network, x, tta, amp_dtype=dtype).float().cpu()

        return self._segment(images, amp, batch_size, step, torch.stack)

    def _segment(self, images, amp: str | None, batch_size: int, step, stack):
        """``step(uint8 batch [B, 3, H, W], autocast dtype)`` -> B results, run over the inputs of
        :meth:`predict` and shaped as it says (a video's frame results joined by ``stack``)."""
        shape, items = _inputs(images)
        if batch_size < 1:
            raise ValueError(f"predict: batch_size={batch_size}: give a number >= 1")
        _, dtype = checkpoint_precision(amp, self.checkpoint, self.device)
        chunks, read, videos = _image_batches(
            items, batch_size, "the image" if shape == "one" else "image {}"
        )
        out: list = [None] * len(items)
        with eval_mode(self.network), torch.inference_mode():
            for chunk in chunks:
                for i, one in zip(chunk, step(read(chunk), dtype), strict=True):
                    out[i] = one
            for i in videos:  # [T, ...]: the frames' results
                out[i] = stack(
                    [one for batch in _video_batches(items[i], batch_size) for one in step(batch, dtype)]
                )
        if shape == "files":
            return dict(zip(items, out, strict=True))
        return out[0] if shape == "one" else out

    def colorize(self, ids: np.ndarray) -> np.ndarray:
        """Class indices [H, W] -> their label set's colours [H, W, 3] uint8."""
        return self.labels.palette()[np.asarray(ids)]

    def overlay(self, image, labels: np.ndarray | None = None, legend: bool = True) -> PILImage.Image:
        """One image (any input :meth:`predict` takes) with the colours of its class indices blended over it
        (as ``famix predict``'s ``_overlay.png``), and below it, if ``legend``, the swatch and name of each
        class present (:func:`famix.engine.visualize.legend`). ``labels``: its class indices [H, W] if
        already predicted (None: :meth:`predict` them). Returns an RGB image [H (+ legend), W]."""
        rgb = as_rgb(image)  # [3, H, W] uint8
        ids = self.predict(rgb) if labels is None else np.asarray(labels)  # [H, W]
        if ids.shape != tuple(rgb.shape[1:]):
            raise ValueError(
                f"labels has shape {ids.shape}: expected the image's [H, W] {tuple(rgb.shape[1:])}"
            )
        picture = overlay(rgb, ids, colours=self.labels.palette(), num_classes=self.num_classes)  # [H, W, 3]
        return PILImage.fromarray(with_legend(picture, ids, self.labels) if legend else picture)

    def save_pretrained(self, folder: str | os.PathLike, force: bool = False) -> Path:
        """:func:`save_pretrained` of this model (its current weights)."""
        return save_pretrained(self, folder, force=force)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, device: str = "auto") -> Segmenter:
        """:func:`load` (a checkpoint, a saved folder, a Hub id ``hf:OWNER/NAME``), by Hugging Face's name."""
        return load(source, device=device)

    def evaluate(self, specs: str | Sequence[str], **options) -> dict[str, EvalResult]:
        """:func:`evaluate` of this model as it is now on dataset specs: ``{spec: EvalResult}``."""
        return evaluate(self, [specs] if isinstance(specs, str) else list(specs), **options)

    def export(self, out: str | os.PathLike, format: str = "onnx", size="512x1024", **options) -> Path:
        """``famix export`` of this model as it is now: ``out`` written (and checked against this model) as
        ``format`` at ``size`` ("HxW"); ``options``: the other :class:`~famix.settings.ExportSettings`
        fields (``dynamic``, ``graph``, ...; int8 needs the command, which reads the source data)."""
        settings = ExportSettings(format=format, size=size, **options)
        if settings.int8:
            raise ValueError("int8 calibrates on the source data: use `famix export CKPT --int8` on the file")
        network = self.network.to("cpu").eval()
        try:
            export_stage.export_model(network, self.config, out, settings)
        finally:
            self.network.to(self.device)
        return Path(out)

    def benchmark(self, data: str | Sequence[str], **options) -> dict:
        """:func:`benchmark` (``famix benchmark``) of the file this model was loaded from."""
        if self.source is None:
            raise ValueError("this model was not loaded from a file: save_pretrained it, then benchmark that")
        return benchmark(self.source, data, **options)

    def push_to_hub(
        self, repo: str, private: bool = False, revision: str | None = None, bank: str | None = None
    ) -> str:
        """:func:`push` of this model (its current weights) to the Hub as ``repo``; returns its URL."""
        return push(self, repo, private=private, revision=revision, bank=bank)


def _is_path(x) -> bool:
    return isinstance(x, str | os.PathLike)


def _names_files(x) -> bool:
    # a folder or a glob pattern: an input that famix predict expands into files (list_images)
    return _is_path(x) and (Path(x).is_dir() or (not Path(x).exists() and any(c in str(x) for c in "*?[")))


def _inputs(images) -> tuple[str, list]:
    """How :meth:`Segmenter.predict`'s result is shaped ("one", "list", or "files": ``{path: result}``) and
    its items: images (anything ``as_rgb`` takes) and video paths; for "files", the files that famix predict
    expands the inputs into, in its order."""
    single = not isinstance(images, list | tuple) and not (
        isinstance(images, np.ndarray | torch.Tensor) and images.ndim == 4
    )
    items = [images] if single else list(images)
    if not items:
        raise ValueError("predict: give at least one image")
    if not any(_names_files(x) for x in items):
        return ("one" if single else "list"), items
    other = next((i for i, x in enumerate(items) if not _is_path(x)), None)
    if other is not None:
        raise TypeError(
            f"predict: item {other} is a {type(items[other]).__name__} in a list with a folder or a glob "
            "pattern, whose result is keyed by file path: give such a list paths only, and segment the "
            "other images in a call of their own"
        )
    return "files", list_images(items, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)


def _image_batches(items: list, batch_size: int, what: str):
    """The plan of a prediction, every input checked first (in-memory images converted, image files' headers
    read, video files found, PyAV imported if needed): ``(chunks, read, videos)``: the indices of the images
    of one size, ``batch_size`` at most per chunk (in input order, as ``famix predict`` batches them);
    ``read(chunk)``: that chunk's uint8 batch [B, 3, H, W] on the CPU (files decoded then, one batch at a
    time); the indices of the videos."""
    pixels: dict[int, torch.Tensor] = {}  # in-memory images, converted
    by_size: dict[tuple[int, int], list[int]] = {}
    videos = []
    for i, x in enumerate(items):
        if _is_path(x) and is_video(x):
            if not Path(x).is_file():
                raise FileNotFoundError(f"video not found: {x}")
            videos.append(i)
            continue
        if _is_path(x):
            w, h = image_size(x)  # from the header: nothing decoded yet
        else:
            pixels[i] = as_rgb(x, what.format(i))
            h, w = pixels[i].shape[1:]
        by_size.setdefault((h, w), []).append(i)
    if videos:
        import_av()  # a missing PyAV fails before the images are done, not after
    chunks = [g[j : j + batch_size] for g in by_size.values() for j in range(0, len(g), batch_size)]

    def read(chunk: list[int]) -> torch.Tensor:
        return torch.stack([pixels[i] if i in pixels else read_image(items[i]) for i in chunk])

    return chunks, read, videos


def _video_batches(path: str | os.PathLike, batch_size: int) -> Iterator[torch.Tensor]:
    """A video's frames as uint8 RGB batches [B, 3, H, W], ``batch_size`` at most, decoded as
    ``famix predict`` decodes them (:func:`famix.engine.video.segment_video`: the first video stream, PyAV's
    rgb24 frames)."""
    with open_video(path) as (source, stream):
        frames = (frame.to_ndarray(format="rgb24") for frame in source.decode(stream))  # [H, W, 3] uint8
        count = 0
        while batch := list(itertools.islice(frames, batch_size)):
            count += len(batch)
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)  # [B, 3, H, W] uint8
    if count == 0:
        raise ValueError(f"no frames could be decoded from {path}")


def load(source: str | os.PathLike, device: str = "auto") -> Segmenter:
    """A trained model from a famix checkpoint, an official FAMix ``.pth``, a folder written by
    :func:`save_pretrained` / ``famix save``, or a Hub id ``hf:OWNER/NAME[@REVISION]`` (downloaded into the
    Hub's cache; offline, read from it)."""
    dev = resolve_device(device)
    ckpt = load_checkpoint(source)
    network, cfg = load_segmenter(ckpt, device=dev, channels_last=True)
    kept = {k: ckpt[k] for k in ("config", "run", "cur_itrs", "best_score", "pretrained") if k in ckpt}
    return Segmenter(network, cfg, kept, dev, source)


def save_pretrained(
    model: Segmenter | str | os.PathLike,
    folder: str | os.PathLike,
    bank: str | None = None,
    force: bool = False,
) -> Path:
    """Write a model (a :class:`Segmenter`, or a checkpoint / folder / Hub id) as a folder to share:
    ``model.safetensors``, ``config.json``, ``README.md`` (model card with the evaluations found beside the
    checkpoint), and the style bank if ``bank`` (a path, or ``"auto"``: the one it was trained with)."""
    if not isinstance(model, Segmenter):
        return share.save(model, folder, bank, force, say=lambda _: None)
    state = {k: v.detach().cpu() for k, v in model.network.state_dict().items()}
    ckpt = {**model.checkpoint, "model_state": state}
    return share.save(ckpt, folder, bank, force, say=lambda _: None, source=model.source)


def push(
    model: Segmenter | str | os.PathLike,
    repo: str,
    private: bool = False,
    revision: str | None = None,
    bank: str | None = None,
) -> str:
    """Upload a model (a :class:`Segmenter` with its current weights, a checkpoint or a saved folder) to the
    Hub as ``repo`` (OWNER/NAME); returns its URL."""
    if not isinstance(model, Segmenter):
        return share.push(model, repo, private, revision, bank, say=lambda _: None)
    with tempfile.TemporaryDirectory(prefix="famix-push-") as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", bank=bank)
        return share.push(folder, repo, private, revision, say=lambda _: None)


def mine(cfg: Config, progress: bool = True):
    """Mine ``cfg``'s style bank (``famix mine``); returns the :class:`~famix.style.bank.StyleBank`."""
    return mine_stage.run(cfg, progress=progress)


def train(cfg: Config) -> dict:
    """Train (or resume, or find finished) ``cfg``'s run (``famix train``); returns its final metrics.
    Under torchrun, call it inside ``famix.engine.distributed.session()``."""
    return train_stage.run(cfg)


def evaluate(
    model: Segmenter | str | os.PathLike,
    specs: Sequence[str],
    amp: str | None = None,
    batch_size: int = 4,
    workers: int = 0,
    progress: bool = True,
    protocol: str = "paper",
    tta: InferenceSettings | None = None,
    **options,
) -> dict[str, EvalResult]:
    """The (m)IoU (%) of a model on dataset specs, ``{spec: EvalResult}``, through ``famix eval``'s stage
    (the same input checks; results cached beside the checkpoint): a checkpoint / folder / Hub id, or a loaded
    :class:`Segmenter` as it is now (cached beside the file it was loaded from, keyed by its weights'
    content, so a changed model is evaluated anew). ``tta``, or its fields as keywords:
    :func:`inference_settings`."""
    settings = EvalSettings(
        tta=inference_settings(tta, options),
        amp=amp,
        batch_size=batch_size,
        workers=workers,
        protocol=protocol,
    )
    quiet = lambda _: None  # noqa: E731
    if isinstance(model, Segmenter):
        settings = dataclasses.replace(settings, device=str(model.device))
        return evaluate_stage.run_loaded(
            model.network, model.checkpoint, model.source, list(specs), settings, progress, quiet
        )[0]
    return evaluate_stage.run(model, list(specs), settings, progress=progress, say=quiet)[0]


def benchmark(
    model: str | os.PathLike,
    data: str | Sequence[str],
    out: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    **settings,
) -> dict:
    """Speed, size, peak memory, achieved GFLOP/s and mIoU on ``data`` (dataset specs) of a checkpoint / saved
    folder / Hub id in each deployment variant (``famix benchmark``): ``settings`` are
    :class:`~famix.settings.BenchmarkSettings` fields (formats, precisions, size, batch, ...). Writes
    benchmark.md, .json and .png into ``out`` (default: beside the checkpoint, ``<stem>.benchmark/``) and
    returns the JSON's content."""
    specs = [data] if isinstance(data, str) else list(data)
    s = BenchmarkSettings(**settings)
    return benchmark_stage.run(model, specs, s, out=out, force=force, progress=progress, say=lambda _: None)


def report(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """One self-contained HTML page (``famix report``) of a training run folder, a ``famix eval`` results
    JSON, or a folder of them: returns its path (default: ``PATH/report.html``, ``<stem>.report.html``)."""
    return report_stage.run(path, out=out, say=lambda _: None)


def inference_settings(
    tta: InferenceSettings | None = None, options: dict | None = None
) -> InferenceSettings:
    """The test-time settings of a call: ``tta``, or an :class:`~famix.settings.InferenceSettings` of the
    keywords ``options`` (its fields: scale, ensemble, window, stride, flip, scales), not both."""
    options = options or {}
    if tta is not None and options:
        raise TypeError(f"give tta or its fields ({', '.join(sorted(options))}), not both")
    if tta is not None:
        return tta
    fields = {f.name for f in dataclasses.fields(InferenceSettings)} - {"fit"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"unknown test-time option(s) {unknown}: choose from {sorted(fields)}")
    return InferenceSettings(**options)


def app(
    model: str | os.PathLike,
    weights: str | None = None,
    data: str | None = None,
    out: str | os.PathLike = "famix-app",
    device: str = "auto",
    **adapt_settings,
):
    """The page of ``famix app`` for a model (a checkpoint, a saved folder, a Hub id), as a ``gradio.Blocks``
    to ``launch()`` (a Space's app.py does: ``famix save --space``): ``weights`` the conditions' CLIP (None:
    the model's), ``data`` the source images adaptation restyles (None: the model's data.train where
    readable), ``out`` the adapted models' folder, ``adapt_settings`` :class:`~famix.settings.AdaptSettings`
    fields. Needs ``famix[app]``."""
    from famix.settings import AdaptSettings, AppSettings
    from famix.stages import app as app_stage

    settings = AppSettings(
        weights=weights, data=data, out=str(out), device=device, adapt=AdaptSettings(**adapt_settings)
    )
    app_stage.gradio()  # installed, or one line saying how
    return app_stage.page(app_stage.Session(model, settings, say=lambda _: None))


def diagnose(
    model: str | os.PathLike,
    data: str | Sequence[str],
    out: str | os.PathLike | None = None,
    progress: bool = True,
    **settings,
) -> dict:
    """``famix diagnose`` of a model on target sets (dataset specs, image folders or globs): per image and
    per set class shares, confidence, entropy, out-of-domain score, CLIP's condition ranking, mIoU and AUROC
    where labelled, the suggested adaptation; ``settings``: :class:`~famix.stages.diagnose.DiagnoseSettings`
    fields. Writes diagnose.json / .md / maps into ``out`` and returns the JSON's content."""
    from famix.stages import diagnose as diagnose_stage

    specs = [data] if isinstance(data, str) else list(data)
    s = diagnose_stage.DiagnoseSettings(**settings)
    return diagnose_stage.run(model, specs, s, out=out, progress=progress, say=lambda _: None)


def adapt(
    checkpoint: str | os.PathLike,
    targets: Sequence[str],
    source: str,
    out: str | os.PathLike,
    clip_weights: str | None = None,
    progress: bool = True,
    **settings,
) -> dict[str, Path]:
    """Zero-shot adaptation to target domains described in words (``famix adapt``, PODA): one model per
    target; ``settings``: :class:`~famix.stages.adapt.AdaptSettings` fields. Returns {target: checkpoint}."""
    s = adapt_stage.AdaptSettings(**settings)
    return adapt_stage.run(
        checkpoint, list(targets), source, out, clip_weights, s, progress, say=lambda _: None
    )


def demo_config(out: str | os.PathLike = "famix-demo", seed: int = 0, quick: bool = False) -> Config:
    """The settings of ``famix demo``'s FAMix model, a :class:`Config` to change and pass to :func:`mine` and
    :func:`train`: the tiny CLIP shipped in the package, the miniature world's day domain as source (scenes
    of ``famix.world.render``), the CPU; its bank under ``out``. ``quick``: ``famix demo --quick``'s."""
    # the demo sits above the library (nothing in the library imports it): loaded only when asked for
    from famix.demo.run import demo_config as settings

    return settings(Path(out), quick, seed)
