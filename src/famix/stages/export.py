"""``famix export``: a checkpoint's segmenter as ONNX, a torch.export program (``.pt2``) or TorchScript,
checked against the eager model before the file is written. Reading the files back (and running ONNX
files for ``famix predict``) is ``engine/exported.py``; the settings are ``famix.settings.ExportSettings``.

The ``logits`` graph (the default) has the contract of ``SegmentationNetwork.forward``: normalised float32
images ``[B, 3, H, W]`` (RGB in [0, 1], then ``(x - input_mean) / input_std`` per channel, the model's own
values, in the metadata) in, logits ``[B, K, H, W]`` out (argmax over K = the class). The ``ids`` graph
(:class:`PixelsToIds`) takes uint8 RGB images ``[B, H, W, 3]`` and returns class ids uint8 ``[B, H, W]``:
normalisation and argmax inside, so a deployed file needs no famix code. Dynamic dimensions are named
``batch``, ``height``, ``width`` in ONNX files. ``int8`` (ONNX): the fp32 file quantised by ONNX Runtime
(``engine/quantize.py``), calibrated on source images (:func:`calibration_set`). A fixed-size export takes
``[1, 3, H, W]`` only; ``dynamic`` takes any batch and any height and width of at least two output strides:
any size for a ResNet (as the eager model), multiples of its pad size for a ViT / EVA (the patch size) or a
ConvNeXt (32), whose eager model zero-pads other sizes at the bottom and right and crops the logits back
(callers do the same: ``pad_to_multiple``). The file carries this in its metadata (ONNX ``metadata_props``;
a ``famix.json`` extra file in ``.pt2`` and TorchScript archives), and the export's run record (the
checkpoint's content, format, size, tolerances): the same export again finds it and writes nothing.

famix replaces an existing output only if it is a file of the same format written by ``famix export``
(``force``, ``--force``: any file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from famix.config import Config, ModelConfig, from_dict, train_sources
from famix.data.transforms import normalize
from famix.engine import pretrained
from famix.engine.checkpoint import load_checkpoint, load_segmenter, model_config
from famix.engine.checks import check_specs
from famix.engine.distributed import single_process
from famix.engine.exported import METADATA_FILE, import_onnx_tools, jit_quietly, load_exported, read_metadata
from famix.engine.loggers import dataset_name
from famix.engine.outputs import check_output_path, check_replaceable
from famix.engine.runs import KEY, RunRecord
from famix.io import atomic_path, check_space, file_fingerprint, remove_stale_temps
from famix.models.segmenter import SegmentationNetwork
from famix.settings import FORMATS, ExportSettings
from famix.style.bank import StyleBank
from famix.version import __version__


class ExportCheck(NamedTuple):
    """An exported model against the eager one on inputs of ``shapes``."""

    max_abs_diff: float | None  # max |logit difference| over all inputs, classes and pixels (None: ids only)
    agreement: float  # % of pixels with the same argmax
    shapes: list[tuple[int, ...]]  # the inputs checked, [B, 3, H, W] (ids graphs: [B, H, W, 3]) each
    on: str = "random inputs"  # what the inputs were

    def describe(self) -> str:
        sizes = ", ".join("x".join(map(str, s)) for s in self.shapes)
        diff = "" if self.max_abs_diff is None else f"max abs logit difference {self.max_abs_diff:.3g}, "
        return f"{diff}argmax agreement {self.agreement:.3f} % of pixels ({self.on}: {sizes})"


class PixelsToIds(nn.Module):
    """The ``ids`` graph: uint8 RGB images [B, H, W, 3] -> class ids uint8 [B, H, W]. The network's own
    normalisation (as ``data.transforms.normalize``: x / 255, then (x - mean) / std) and the argmax are
    inside, so the file needs no code around it."""

    def __init__(self, network: SegmentationNetwork):
        super().__init__()
        self.network = network
        mean, std = network.normalization
        self.register_buffer("mean", torch.tensor(tuple(mean)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(tuple(std)).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, restyle=None) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0  # [B, 3, H, W] in [0, 1]
        logits = self.network((x - self.mean) / self.std, restyle)  # [B, K, H, W]
        return logits.argmax(1).to(torch.uint8)  # [B, H, W]


class WithStyleMap(nn.Module):
    """A graph (the network or :class:`PixelsToIds`) with the style map as a second output, (its output,
    style map [B, C, h, w]): what ``--calibrate styles`` calibrates (``engine.quantize`` drops the second
    output from the file it writes)."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.inner = graph  # not "graph": an exported program's modules have their own

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        box: list[torch.Tensor] = []

        def keep(f: torch.Tensor) -> torch.Tensor:
            box.append(f)
            return f

        return self.inner(images, keep), box[0]


def check_size(size: tuple[int, int], multiple: int, dynamic: bool) -> None:
    """Refuse a size the exported model cannot take: multiples of ``multiple`` (the output stride),
    at least two of them when ``dynamic`` (torch.export specialises sizes of 0 and 1)."""
    least = 2 * multiple if dynamic else multiple

    def fit(n: int) -> int:
        return max(least, round(n / multiple) * multiple)

    if any(n % multiple or n < least for n in size):
        raise ValueError(
            f"--size {size[0]}x{size[1]}: height and width must be multiples of the model's output stride "
            f"{multiple}{f', at least {least} with --dynamic' if dynamic else ''}; "
            f"pass --size {fit(size[0])}x{fit(size[1])}"
        )


def default_output(checkpoint: str | Path, settings: ExportSettings | str) -> Path:
    """Next to the checkpoint: ``runs/x/best.pt`` -> ``runs/x/best.onnx``, ``best.pt2`` or
    ``best.torchscript.pt``; an ids graph adds ``.ids``, int8 ``.int8`` (``best.ids.int8.onnx``)."""
    s = settings if isinstance(settings, ExportSettings) else None
    fmt = s.format if s is not None else settings
    tags = "".join(t for t, on in ((".ids", s and s.graph == "ids"), (".int8", s and s.int8)) if on)
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + tags + FORMATS[fmt])


def metadata(
    cfg: ModelConfig,
    output_stride: int,
    fmt: str,
    size: tuple[int, int],
    dynamic: bool,
    pad: int,
    normalization: tuple[tuple[float, ...], tuple[float, ...]],
    graph: str = "logits",
) -> dict:
    """What a user of the file needs to know, as strings (ONNX metadata_props are str -> str). ``pad``: the
    eager model zero-pads inputs to multiples of it (``SegmentationNetwork.pad_multiple``: a ViT's patch
    size, a ConvNeXt's 32), so a dynamic export takes multiples of it only;
    ``normalization``: the model's (mean, std); ``graph``: ``logits`` or ``ids`` (:class:`PixelsToIds`)."""
    least = 2 * output_stride if dynamic else None
    multiple = pad if dynamic else 1
    h, w = size
    if graph == "ids":
        shape = "[batch, height, width, 3]" if dynamic else f"[1, {h}, {w}, 3]"
    else:
        shape = "[batch, 3, height, width]" if dynamic else f"[1, 3, {h}, {w}]"
    if dynamic:
        shape += f", any batch, height and width >= {least}"
    if dynamic and pad > 1:
        shape += f" and multiples of {pad}"
    if pad > 1:
        shape += (
            f" (zero-pad other sizes at the bottom and right to multiples of {pad}, as the eager "
            "model does, and crop the outputs back)"
        )
    mean, std = normalization
    if graph == "ids":
        io_ = {
            "input": f"images: uint8 {shape}, RGB (normalisation inside)",
            "output": "ids: uint8 [B, H, W], the class index (label_set), argmax inside",
        }
    else:
        io_ = {
            "input": f"images: float32 {shape}, RGB in [0, 1] then (x - input_mean) / input_std per channel",
            "output": "logits: float32 [B, K, H, W], K = num_classes; argmax over K: the class (label_set)",
        }
    return {
        "famix_version": __version__,
        "format": fmt,
        "graph": graph,
        **io_,
        "input_mean": json.dumps([float(v) for v in mean]),
        "input_std": json.dumps([float(v) for v in std]),
        "num_classes": str(len(cfg.labels)),
        "class_names": json.dumps(cfg.labels.names),
        "label_set": json.dumps(cfg.labels.to_dict()),  # names, colours, ids, prompts of the classes
        "backbone": cfg.backbone,
        "output_stride": str(output_stride),
        "dynamic": json.dumps(dynamic),
        "size": "dynamic" if dynamic else f"{h}x{w}",
        "size_multiple": str(multiple),
        "min_size": str(least or 1),
        "pad_to_multiple": str(pad),
    }


def check_inputs(
    size: tuple[int, int],
    multiple: int,
    dynamic: bool,
    seed: int = 0,
    any_size: bool = False,
    graph: str = "logits",
    normalization=None,
) -> list[torch.Tensor]:
    """Random inputs: [1, 3, H, W] twice, or (dynamic) [2, 3, H, W] and a second batch size and size,
    [1, 3, H + m, W + 2m], and (``any_size``) a third, [1, 3, H + 1, W + 3], not a multiple. Normalised
    with ``normalization`` (None: CLIP's) for ``logits`` graphs; uint8 [B, H, W, 3] for ``ids`` graphs."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    shapes = [(2, 3, h, w), (1, 3, h + multiple, w + 2 * multiple)] if dynamic else [(1, 3, h, w)] * 2
    if any_size:
        shapes.append((1, 3, h + 1, w + 3))
    if graph == "ids":
        return [
            torch.randint(0, 256, (b, hh, ww, c), generator=g, dtype=torch.uint8) for b, c, hh, ww in shapes
        ]
    return [normalize(torch.rand(s, generator=g), *(normalization or ())) for s in shapes]


def compare(model: nn.Module, exported, inputs: list[torch.Tensor], on: str = "random inputs") -> ExportCheck:
    """Outputs of ``exported`` against those of the eager ``model`` (a graph: the network or
    :class:`PixelsToIds`) on each input: logits (a NaN difference is NaN, so it fails any tolerance) and
    their argmax, or (ids graphs) the ids only."""
    diffs, same, total = [], 0, 0
    with torch.no_grad():
        for x in inputs:
            ref, out = model(x), exported(x)  # [B, K, H, W] each, or ids [B, H, W]
            if out.shape != ref.shape:
                raise ValueError(
                    f"the export returned {tuple(out.shape)} for {tuple(x.shape)}, not {tuple(ref.shape)}"
                )
            if ref.is_floating_point():
                ref, out = ref.double(), out.double()
                diffs.append((out - ref).abs().max())  # torch's max keeps NaN; Python's max() drops it
                ref, out = ref.argmax(1), out.argmax(1)
            same += (out.long() == ref.long()).sum().item()
            total += ref.numel()
    diff = torch.stack(diffs).max().item() if diffs else None
    return ExportCheck(diff, 100.0 * same / total, [tuple(x.shape) for x in inputs], on)


def _takes_any_size(model: SegmentationNetwork, dynamic: bool) -> bool:
    # A ResNet runs any size as it is (convolutions, then resizes to the input's size), and torch.export
    # traces that for symbolic sizes. A ViT's forward pads to multiples of its patch size, a branch on the
    # size that torch.export cannot trace: its export takes multiples, and callers pad as it would.
    return dynamic and model.pad_multiple == 1


def _export_program(graph: nn.Module, example: torch.Tensor, multiple: int, dynamic: bool, any_size: bool):
    dynamic_shapes = None
    if dynamic:
        from torch.export import Dim

        ids = example.dtype == torch.uint8  # [B, H, W, 3]: the sides are dims 1 and 2, else 2 and 3
        hd, wd = (1, 2) if ids else (2, 3)
        dims = {0: Dim("batch", min=1)}
        if any_size:
            dims[hd], dims[wd] = Dim("height", min=2 * multiple), Dim("width", min=2 * multiple)
        else:  # height and width in whole strides (patches)
            dims[hd] = multiple * Dim("height_strides", min=2)
            dims[wd] = multiple * Dim("width_strides", min=2)
        dynamic_shapes = ({0: dims[0], hd: dims[hd], wd: dims[wd]},)
    with torch.no_grad():
        return torch.export.export(graph, (example,), dynamic_shapes=dynamic_shapes)


def name_dimensions(model, names: tuple[str, ...]) -> None:
    """Give an ONNX model's dynamic dimensions the names users read: the input's dims ``names`` (e.g.
    batch, -, height, width), wherever the same symbol (or expression, e.g. ``16*s53``) appears: inputs,
    outputs and intermediate shapes (torch's converter names them ``s77``, ``s53``...)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    rename = {d.dim_param: n for d, n in zip(dims, names, strict=True) if d.dim_param and n}
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


def _write(
    graph: nn.Module,
    fmt: str,
    example: torch.Tensor,
    multiple: int,
    dynamic: bool,
    any_size: bool,
    meta: dict,
    dst,
    style_map: bool = False,
):
    """``graph`` to ``dst`` as ``fmt``; ``style_map`` (ONNX): with the style map as a second output
    (:class:`WithStyleMap`), to calibrate int8 on restyled maps."""
    if fmt == "torchscript":
        with torch.no_grad(), jit_quietly():
            # Sizes are traced as ops, so any size runs; check_trace=False: export_model checks it.
            traced = torch.jit.trace(graph, example, check_trace=False)
            torch.jit.save(traced, str(dst), _extra_files={METADATA_FILE: json.dumps(meta)})
        return
    ids = example.dtype == torch.uint8
    program = _export_program(
        WithStyleMap(graph) if style_map else graph, example, multiple, dynamic, any_size
    )
    if fmt == "exported-program":
        with open(dst, "wb") as f:  # a file object: torch.export.save wants paths to end in .pt2
            torch.export.save(program, f, extra_files={METADATA_FILE: json.dumps(meta)})
        return
    outputs = ["ids" if ids else "logits"] + (["style_map"] if style_map else [])
    with contextlib.redirect_stdout(io.StringIO()):  # the converter's progress lines
        onnx_program = torch.onnx.export(
            program, (example,), dynamo=True, input_names=["images"], output_names=outputs, verbose=False
        )
    onnx_program.model.metadata_props.update(meta)
    onnx_program.save(str(dst), external_data=False)
    if dynamic:
        import onnx

        model = onnx.load(str(dst))
        name_dimensions(
            model, ("batch", "height", "width", None) if ids else ("batch", None, "height", "width")
        )
        onnx.save(model, str(dst))


def _check_out(out: str | Path, fmt: str, force: bool) -> Path:
    # Before minutes of loading and tracing: a path famix can write, and no file famix must keep.
    out = check_output_path(out, "--out")
    ours = f"{'an' if fmt[0] in 'aeio' else 'a'} {fmt} file written by `famix export`"
    check_replaceable(out, lambda p: read_metadata(p, fmt) is not None, ours, force)
    return out


def _check_tools(fmt: str) -> None:
    if fmt == "onnx":
        import_onnx_tools()  # before minutes of loading and tracing


def _reload(path: Path, fmt: str):
    """The written file as a callable of the graph's own inputs and outputs (an ONNX file run as it is by
    ONNX Runtime: raw ids for an ids graph, not famix's one-hot view of them)."""
    if fmt != "onnx":
        return load_exported(path, fmt)
    session = import_onnx_tools(runtime_only=True).InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.contiguous().numpy()})[0])


class Calibration(NamedTuple):
    """Source images for int8: ``images`` uint8 [N, 3, H, W] and their ``labels`` [N, H, W] (int64; 255:
    ignore) to calibrate on, ``held`` uint8 [M, 3, H, W] other images to check the int8 file on, the
    ``spec`` they come from and ``restyle`` (``--calibrate styles``: a style mixer, ``mixer(f, labels)``)."""

    images: torch.Tensor
    labels: torch.Tensor
    held: torch.Tensor
    spec: str
    restyle: object | None = None


CHECK_IMAGES = 4  # held-back source images an int8 file is checked on


def _fit(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """[C, H, W] resized so that it covers ``size`` (aspect kept), then centre-cropped to it."""
    h, w = image.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    new = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
    x = image[None].float()
    x = F.interpolate(x, size=new, mode=mode, **({"antialias": True} if mode == "bilinear" else {}))
    top, left = (new[0] - size[0]) // 2, (new[1] - size[1]) // 2
    return x[0, :, top : top + size[0], left : left + size[1]]


def stored_source(config: dict) -> str | None:
    """The source spec int8 calibration defaults to: a checkpoint's stored ``data.train`` (of several sources,
    the first); None when it names none."""
    train = (config.get("data") or {}).get("train")
    return train_sources(train)[0] if train else None


def calibration_set(ckpt: dict, s: ExportSettings, model: SegmentationNetwork, seed: int = 0) -> Calibration:
    """``s.calibration_images`` source images (``s.calibration_data``, else :func:`stored_source`) and
    :data:`CHECK_IMAGES` others, drawn with a seeded generator and fitted to ``s.size`` (resized to cover it,
    centre-cropped); with ``s.calibrate == "styles"`` the style mixer of the bank
    (``s.bank``, else the checkpoint's ``style.bank``), as training restyles (famix's per-class mixing)."""
    stored = ckpt.get("config", {})
    spec = s.calibration_data or stored_source(stored)
    if not spec:
        raise ValueError("--int8: the checkpoint names no training data: pass --calibration-data SPEC")
    option = (
        "--calibration-data" if s.calibration_data else "--calibration-data (the checkpoint's data.train)"
    )
    labels = model_config(ckpt).labels
    dataset = check_specs([spec], option, labels)[spec]
    need = s.calibration_images + CHECK_IMAGES
    if len(dataset) < need:
        raise ValueError(
            f"{option} {spec}: {len(dataset)} images, --int8 needs {need} ({s.calibration_images} to "
            f"calibrate on, {CHECK_IMAGES} to check): pass fewer --calibration-images or more data"
        )
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:need].tolist()
    images, targets = [], []
    for i in order:
        image, label = dataset[i]  # uint8 [3, H, W], [H, W]
        images.append(_fit(image, s.size, "bilinear").round().clamp(0, 255).to(torch.uint8))
        targets.append(_fit(label[None], s.size, "nearest")[0].long())
    restyle = _mixer(stored, s, model) if s.calibrate == "styles" else None
    n = s.calibration_images
    return Calibration(
        torch.stack(images[:n]), torch.stack(targets[:n]), torch.stack(images[n:]), spec, restyle
    )


def _mixer(stored: dict, s: ExportSettings, model: SegmentationNetwork):
    from famix.engine.train import build_mixer  # training's mixer, as the run restyled its features

    cfg = from_dict(stored, Config) if stored else Config()
    bank = s.bank or cfg.style.bank
    if not bank:
        raise ValueError("--calibrate styles: the checkpoint names no style bank: pass --bank PATH")
    if not Path(bank).is_file():
        raise FileNotFoundError(
            f"--calibrate styles: style bank {bank} not found: pass --bank PATH (the run's `famix mine` bank)"
        )
    made_by = (StyleBank.load(bank).record or {}).get("kind")
    mix = "augment" if made_by == "adapt-styles" else "famix"  # an adapted model's bank: its one target
    cfg.style = dataclasses.replace(cfg.style, mix=mix, bank=bank)
    cfg.model = model_config({"config": stored})
    return build_mixer(cfg, model, torch.device("cpu"))


def _graph_inputs(graph: nn.Module, images: torch.Tensor, normalization) -> list[torch.Tensor]:
    # uint8 [N, 3, H, W] -> one input per image: [1, H, W, 3] uint8 (ids graphs) or normalised [1, 3, H, W]
    if isinstance(graph, PixelsToIds):
        return [x[None].permute(0, 2, 3, 1).contiguous() for x in images]
    return [normalize(x[None], *normalization) for x in images]


def export_model(
    model: SegmentationNetwork,
    cfg: ModelConfig,
    out: str | Path,
    settings: ExportSettings,
    record: dict | None = None,
    calibration: Calibration | None = None,
) -> ExportCheck:
    """Export the eval-mode segmenter ``model`` (on the CPU) to ``out`` as ``settings`` say, checked first.
    ``record``: the export's run record, kept in the file's metadata (key ``run``, JSON).

    The file is written to a temporary path, loaded back and compared with ``model`` on
    :func:`check_inputs`; it replaces ``out`` only if the max abs logit difference is <= ``settings.atol``
    and the argmax agreement >= ``settings.min_agreement`` %, else ValueError and nothing is written. An
    int8 file (``settings.int8``, ``calibration`` required) is checked on ``calibration.held``, agreement
    only. An existing ``out`` that is not a file of the format from ``famix export`` raises FileExistsError
    unless ``settings.force``.
    """
    s = settings
    fmt, size, dynamic = s.format, s.size, s.dynamic
    if s.int8 and calibration is None:
        raise ValueError("an int8 export needs calibration images (stages.export.calibration_set)")
    _check_tools(fmt)
    out = _check_out(out, fmt, s.force)
    multiple = model.output_stride  # total downsampling: a ResNet's dilated strides, a ViT's patch size
    check_size(size, multiple, dynamic)
    graph = PixelsToIds(model).eval() if s.graph == "ids" else model
    any_size = _takes_any_size(model, dynamic)
    inputs = check_inputs(
        size, multiple, dynamic, any_size=any_size, graph=s.graph, normalization=model.normalization
    )
    meta = metadata(cfg, multiple, fmt, size, dynamic, model.pad_multiple, model.normalization, s.graph)
    if record is not None:
        meta["run"] = json.dumps(record, sort_keys=True)
    remove_stale_temps(out)  # what a killed export left behind
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    check_space(out, weights + (1 << 20))  # the weights and the graph: not written on a full disk
    with atomic_path(out) as tmp:
        try:
            if s.int8:
                check = _write_int8(graph, model, s, inputs[0], multiple, any_size, meta, tmp, calibration)
            else:
                _write(graph, fmt, inputs[0], multiple, dynamic, any_size, meta, tmp)
                check = compare(graph, _reload(tmp, fmt), inputs)
        except (ImportError, FileNotFoundError):
            raise
        except Exception as e:  # torch.export / the ONNX converter / the quantiser raise many types
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise ValueError(
                f"torch could not export the model as {fmt}{' int8' if s.int8 else ''} ({type(e).__name__}: "
                f"{first}); try another --format"
            ) from e
        tolerable = check.max_abs_diff is None or check.max_abs_diff <= s.atol
        if not (tolerable and check.agreement >= s.min_agreement):
            raise ExportMismatch(
                f"the {fmt}{' int8' if s.int8 else ''} export does not match the checkpoint's model: "
                f"{check.describe()}, tolerance "
                + ("" if check.max_abs_diff is None else f"--atol {s.atol:g} and ")
                + f"--min-agreement {s.min_agreement:g} %; nothing written. Try another --format, or pass "
                + ("a larger --atol / " if check.max_abs_diff is not None else "")
                + "smaller --min-agreement to accept it"
            )
    return check


class ExportMismatch(ValueError):
    """An export that does not compute what the checkpoint's model does, within the tolerances."""


def _write_int8(
    graph, model, s: ExportSettings, example, multiple, any_size, meta, tmp, calibration
) -> ExportCheck:
    # The fp32 ONNX file (with the style map as a second output to calibrate styles), quantised into tmp,
    # then checked on held-back source images against the eager model.
    from famix.engine.quantize import quantize_onnx

    styles = calibration.restyle is not None
    batches = [x.numpy() for x in _graph_inputs(graph, calibration.images, model.normalization)]
    restyle = None
    if styles:
        labels = calibration.labels

        def restyle(i, style_map):  # the map of calibration image i, restyled as training restyles it
            with torch.no_grad():
                return calibration.restyle(torch.from_numpy(style_map), labels[i : i + 1]).numpy()

    with tempfile.TemporaryDirectory(prefix="famix-int8-") as tmpdir:
        fp32 = Path(tmpdir) / "fp32.onnx"
        _write(graph, "onnx", example, multiple, s.dynamic, any_size, meta, fp32, style_map=styles)
        quantize_onnx(fp32, tmp, batches, restyle)
    held = _graph_inputs(graph, calibration.held, model.normalization)
    check = compare(graph, _reload(tmp, "onnx"), held, on="held-back source images")
    return check._replace(max_abs_diff=None)  # int8 logits are not compared, their classes are


def run(
    checkpoint: str | Path, settings: ExportSettings, out: str | Path | None = None, say=print
) -> tuple[Path, ExportCheck | None]:
    """Export ``checkpoint``'s segmenter as ``settings`` say to ``out`` (default: beside the checkpoint,
    :func:`default_output`); returns the file and the check it passed (None: the file already held this
    export, nothing was written)."""
    single_process("famix export", "every rank would write the same file")
    fmt = settings.format
    out = Path(out) if out is not None else default_output(pretrained.base_path(checkpoint), settings)
    inputs = {"checkpoint": pretrained.fingerprint(checkpoint)}
    ckpt = load_checkpoint(checkpoint)
    calibration = None
    if settings.int8:
        spec = settings.calibration_data or stored_source(ckpt.get("config", {}))
        inputs["calibration data"] = dataset_name(spec) if spec else None  # no folder path: files are shared
        if settings.calibrate == "styles":
            bank = settings.bank or ckpt.get("config", {}).get("style", {}).get("bank")
            inputs["bank"] = file_fingerprint(bank) if bank and Path(bank).is_file() else None
    record = RunRecord("export", settings.record(), inputs)
    if settings.int8 and settings.calibration_data:  # the spec's folders stay on this machine
        record.settings["int8"]["data"] = dataset_name(settings.calibration_data)
    meta = read_metadata(out, fmt) if out.is_file() else None
    if meta is not None and KEY in meta and not record.changes(json.loads(meta[KEY])):
        say(f"famix export: {out} holds this export of {checkpoint} already: nothing to do")
        return out, None
    _check_tools(fmt)
    if out.resolve() == Path(checkpoint).resolve():
        raise ValueError(f"--out {out} is the checkpoint itself: pass another path")
    _check_out(out, fmt, settings.force)
    model, cfg = load_segmenter(ckpt, device="cpu")
    if settings.int8:
        calibration = calibration_set(ckpt, settings, model)
        say(
            f"famix export: calibrating int8 on {len(calibration.images)} images of {calibration.spec}"
            + (" restyled by the style bank" if calibration.restyle is not None else "")
        )
    return out, export_model(model, cfg, out, settings, record.to_dict(), calibration)
