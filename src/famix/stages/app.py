"""``famix app``: a page to try a model in the browser (Gradio, ``pip install "famix[app]"``).

Upload a street photo (or a short video): the classes over it with a legend, each class's share of the
pixels, test-time switches (flip, three scales). Describe the conditions in words: how CLIP rates the image
against the description and the standard conditions (``famix.style.conditions``). Adapt: ``famix adapt``
(PODA) of the model to the description, its progress in the page, then the image before / after side by
side and the adapted checkpoint to download.

:class:`Session` is the model behind the page (no Gradio: tested on its own); :func:`page` lays it out;
:func:`run` checks every input, loads the model and serves it, on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import functools
import html
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from famix.data.readers import as_rgb
from famix.engine import hub
from famix.engine.checkpoint import checkpoint_precision, load_checkpoint, load_segmenter
from famix.engine.checks import check_specs
from famix.engine.conditions import clip_weights, load_clip
from famix.engine.distributed import resolve_device, single_process
from famix.engine.inference import eval_mode, predict_ids
from famix.engine.video import segment_video
from famix.engine.visualize import overlay, render, with_legend
from famix.models.clip import (
    check_weights_reachable,
    clip_normalization,
    clip_preprocess_size,
)
from famix.settings import PLAIN, AppSettings, InferenceSettings
from famix.stages import adapt as adapt_stage
from famix.style.conditions import candidates, image_embeddings, rate
from famix.style.prompts import TextEmbedder

SCALES = (0.75, 1.0, 1.25)  # the page's multi-scale switch
TOP = 6  # conditions shown
SWATCH = "display: inline-block; width: 14px; height: 14px; border: 1px solid #999;"


def model_name(source) -> str:
    """How the page names a model: a Hub id as it is, a folder by its name, a file with its folder's
    (``F_A_M__FAMix/latest.pt``): never the path of this machine."""
    if hub.is_hub_id(source):
        return str(source)
    path = Path(source)
    return path.name if path.is_dir() or not path.parent.name else f"{path.parent.name}/{path.name}"


def gradio():
    """The gradio module, or one line saying how to install it."""
    try:
        import gradio as gr
    except ImportError as e:
        raise ImportError(f'famix app needs Gradio: pip install "famix[app]" ({e})') from None
    return gr


def tta(flip: bool, multiscale: bool) -> InferenceSettings:
    """The page's switches as test-time settings."""
    return (
        InferenceSettings(flip=flip, scales=SCALES if multiscale else None) if flip or multiscale else PLAIN
    )


class Session:
    """A loaded model and what the page asks of it. ``source``: a checkpoint, a saved folder or a Hub id."""

    def __init__(self, source, s: AppSettings, say=print):
        self.source, self.settings, self.say = source, s, say
        self.device = resolve_device(s.device)
        self.ckpt = load_checkpoint(source)
        self.network, self.cfg = load_segmenter(self.ckpt, device=self.device, channels_last=True)
        self.labels = self.cfg.labels
        _, self.dtype = checkpoint_precision(None, self.ckpt, self.device)
        self.weights = clip_weights(self.ckpt, s.weights)
        # CLIP's input normalisation: the segmenter's (its tower's weights are CLIP's)
        self.clip_norm = clip_normalization(self.cfg.backbone, self.weights, self.cfg.mean, self.cfg.std)
        if s.weights is not None:
            check_weights_reachable(self.cfg.backbone, s.weights)
        self.data, self.why_no_adapt = self._source_data(s.data)
        self.adapted: tuple[str, torch.nn.Module] | None = None  # (description, model)
        self._clip, self._embed = None, None
        self._lock = threading.Lock()  # one model pass at a time (2 browser tabs, one CPU)

    def _source_data(self, given: str | None) -> tuple[str | None, str]:
        """(the source spec adaptation restyles, or None with the reason): ``--data`` is checked now (an error
        stops the start); the checkpoint's own ``data.train`` is used where it can be read here."""
        if given is not None:
            check_specs([given], "--data", self.labels)
            return given, ""
        stored = self.ckpt.get("config", {}).get("data", {}).get("train")
        stored = stored[0] if isinstance(stored, list) and stored else stored  # several sources: the first
        if isinstance(stored, str):
            try:
                check_specs([stored], "data.train", self.labels)
                return stored, ""
            except (ValueError, FileNotFoundError, ImportError):
                pass
        return None, "adaptation restyles the model's source images: start the app with --data SPEC"

    # --- segmentation ---------------------------------------------------------------------------------
    def segment(self, image, flip: bool = False, multiscale: bool = False, network=None) -> np.ndarray:
        """Class indices uint8 [H, W] of one image (HxWx3 uint8 array, PIL image or path)."""
        rgb = as_rgb(image, "the image")  # [3, H, W] uint8
        model = network or self.network
        with self._lock, eval_mode(model), torch.inference_mode():
            return predict_ids(model, rgb[None], self.device, tta(flip, multiscale), self.dtype)[0]

    def picture(self, image, ids: np.ndarray) -> np.ndarray:
        """The image with its classes' colours over it, a legend of the classes present below: [H', W, 3]."""
        rgb = as_rgb(image, "the image")
        shown = overlay(rgb, ids, colours=self.labels.palette(), num_classes=len(self.labels))
        return with_legend(shown, ids, self.labels)

    def shares(self, ids: np.ndarray) -> list[tuple[str, tuple[int, int, int], float]]:
        """(class name, colour, % of the pixels) of each class present, largest first."""
        counts = np.bincount(np.asarray(ids).ravel(), minlength=256)[: len(self.labels)]
        colours, total = self.labels.colors(), max(int(np.asarray(ids).size), 1)
        rows = [
            (self.labels.names[k], tuple(int(v) for v in colours[k]), 100.0 * int(n) / total)
            for k, n in enumerate(counts)
            if n
        ]
        return sorted(rows, key=lambda r: -r[2])

    def shares_html(self, ids: np.ndarray) -> str:
        """:meth:`shares` as an HTML table with a colour swatch per class (the page's legend)."""
        rows = "".join(
            f'<tr><td><span class="famix-swatch" style="{SWATCH} background: rgb{colour};"></span></td>'
            f'<td class="famix-class">{html.escape(name)}</td><td>{share:.1f} %</td></tr>'
            for name, colour, share in self.shares(ids)
        )
        return f'<table class="famix-shares"><tr><th></th><th>class</th><th>pixels</th></tr>{rows}</table>'

    def video(self, path: str, flip: bool = False, multiscale: bool = False) -> Path:
        """The overlay video (legend below each frame) of a video file, in a temporary folder."""
        out = Path(tempfile.mkdtemp(prefix="famix-app-")) / f"{Path(path).stem}_overlay.mp4"
        segment = functools.partial(
            predict_ids, self.network, device=self.device, tta=tta(flip, multiscale), amp_dtype=self.dtype
        )
        draw = functools.partial(render, labels=self.labels, legend=True, same_size=True)  # as famix predict
        with self._lock, eval_mode(self.network), torch.inference_mode():
            return segment_video(path, out, segment, "overlay", progress=False, draw=draw)

    # --- conditions -----------------------------------------------------------------------------------
    def clip(self):
        """The CLIP of the conditions box, built on first use; None without weights."""
        if self._clip is None and self.weights is not None:
            self._clip = load_clip(self.cfg.backbone, self.weights, self.device)
            self._embed = TextEmbedder(self._clip)
        return self._clip

    def conditions(self, image, words: str) -> dict[str, float]:
        """{description: probability} of one image over the user's words (comma-separated) and the standard
        conditions, by CLIP's zero-shot classifier."""
        clip = self.clip()
        if clip is None:
            raise ValueError("the conditions need CLIP weights: start the app with --weights FILE_OR_TAG")
        texts = candidates(words.split(","))
        norm = clip_normalization(self.cfg.backbone, self.weights, self.cfg.mean, self.cfg.std)
        with self._lock:
            image_e = image_embeddings(
                clip, as_rgb(image, "the image")[None], norm, clip_preprocess_size(clip)
            )
            probs = rate(image_e, self._embed(texts), float(clip.logit_scale.exp()))[0]
        return {t: float(p) for t, p in zip(texts, probs, strict=True)}

    # --- adaptation -----------------------------------------------------------------------------------
    def adapt(self, description: str) -> Path:
        """``famix adapt`` of the model to ``description`` into ``<out>/<slug>/`` (a finished one is reused);
        the adapted model becomes the page's "after". Returns its checkpoint."""
        if self.data is None:
            raise ValueError(self.why_no_adapt)
        if self.weights is None:
            raise ValueError("adaptation needs the CLIP weights: start the app with --weights FILE_OR_TAG")
        description = description.strip()
        written = adapt_stage.run(
            self.source,
            [description],
            self.data,
            self.settings.out,
            self.weights,
            self.settings.adapt,
            progress=True,
            say=self.say,
        )
        path = written[description]
        network, _ = load_segmenter(load_checkpoint(path), device=self.device, channels_last=True)
        self.adapted = (description, network)
        return path


def page(session: Session):
    """The Gradio page of ``session``: a ``gradio.Blocks``."""
    gr = gradio()
    name = html.escape(model_name(session.source))
    adapt_note = "" if session.data else f" ({html.escape(session.why_no_adapt)})"

    def segment(image, flip, multiscale):
        if image is None:
            raise gr.Error("upload an image first")
        ids = session.segment(image, flip, multiscale)
        after = None
        if session.adapted is not None:
            after = session.picture(image, session.segment(image, flip, multiscale, session.adapted[1]))
        return session.picture(image, ids), session.shares_html(ids), after

    def video(path, flip, multiscale):
        if path is None:
            raise gr.Error("upload a video first")
        return str(session.video(path, flip, multiscale))

    def conditions(image, words):
        if image is None:
            raise gr.Error("upload an image first")
        try:
            return session.conditions(image, words or "")
        except ValueError as e:
            raise gr.Error(str(e)) from None

    def adapt(image, words, flip, multiscale, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        description = (words or "").split(",")[0].strip()
        if not description:
            raise gr.Error('describe the conditions first (e.g. "heavy snow at night")')
        try:
            path = session.adapt(description)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        before = after = None
        if image is not None:
            before = session.picture(image, session.segment(image, flip, multiscale))
            after = session.picture(image, session.segment(image, flip, multiscale, session.adapted[1]))
        return before, after, str(path), f"adapted to **{html.escape(description)}**: `{path}`"

    with gr.Blocks(title=f"famix: {name}") as blocks:
        gr.Markdown(
            f"## famix: `{name}`\n{session.cfg.backbone} FAMix segmenter, {session.labels.describe()}. "
            "Upload a street photo; describe its conditions; adapt the model to them (PODA)."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="numpy", label="image", sources=["upload"], elem_id="famix-image")
                with gr.Row():
                    flip = gr.Checkbox(label="flip (test time)", value=False)
                    multiscale = gr.Checkbox(label=f"scales {' / '.join(map(str, SCALES))}", value=False)
                go = gr.Button("Segment", variant="primary", elem_id="famix-segment")
            with gr.Column():
                shown = gr.Image(label="classes", interactive=False, elem_id="famix-overlay")
                shares = gr.HTML(elem_id="famix-shares")
        with gr.Row():
            with gr.Column():
                words = gr.Textbox(
                    label="describe the conditions",
                    placeholder="heavy snow at night",
                    elem_id="famix-words",
                )
                with gr.Row():
                    rate_button = gr.Button("What does CLIP see?", elem_id="famix-rate")
                    adapt_button = gr.Button(
                        "Adapt to the description" + adapt_note,
                        interactive=session.data is not None,
                        elem_id="famix-adapt",
                    )
            scores = gr.Label(
                label="CLIP: the image against the conditions", num_top_classes=TOP, elem_id="famix-scores"
            )
        with gr.Row():
            before = gr.Image(label="before", interactive=False)
            after = gr.Image(label="after adaptation", interactive=False)
        with gr.Row():
            adapted_file = gr.File(label="adapted model (checkpoint)")
            adapted_note = gr.Markdown()
        with gr.Accordion("video", open=False):
            with gr.Row():
                clip_in = gr.Video(label="video", sources=["upload"])
                clip_out = gr.Video(label="classes", interactive=False)
            video_button = gr.Button("Segment the video")
        go.click(segment, [image, flip, multiscale], [shown, shares, after])
        image.upload(segment, [image, flip, multiscale], [shown, shares, after])
        rate_button.click(conditions, [image, words], scores)
        words.submit(conditions, [image, words], scores)
        adapt_button.click(
            adapt, [image, words, flip, multiscale], [before, after, adapted_file, adapted_note]
        )
        video_button.click(video, [clip_in, flip, multiscale], clip_out)
    return blocks


def run(source, s: AppSettings, say=print, block: bool = True):
    """Serve ``source`` (checked and loaded first) at ``s.host``:``s.port``; says the address. ``block``:
    wait until interrupted (Ctrl+C), else return the running ``gradio.Blocks`` (close() stops it)."""
    single_process("famix app", "one server is enough")
    gradio()  # installed, or one line saying how, before the model loads
    session = Session(source, s, say)
    blocks = page(session)
    out = Path(s.out).resolve()
    _, url, _ = blocks.launch(
        server_name=s.host,
        server_port=s.port,
        prevent_thread_lock=True,
        quiet=True,
        ssr_mode=False,
        allowed_paths=[str(out)],
    )
    say(f"famix app: serving {model_name(source)} at {url} (Ctrl+C to stop)")
    if s.host not in ("127.0.0.1", "localhost", "::1"):
        say(f"famix app: listening on {s.host}: other machines can reach the page and adapt the model")
    if not block:
        return blocks
    blocks.block_thread()  # until Ctrl+C, which closes the server
    return blocks
