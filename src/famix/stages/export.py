"""``famix export``: a checkpoint's segmenter as ONNX, a torch.export program (``.pt2``) or TorchScript,
checked against the eager model before the file is written. Reading the files back (and running ONNX
files for ``famix predict``) is ``engine/exported.py``; the settings are ``famix.settings.ExportSettings``.

Every exported model has the contract of ``SegmentationNetwork.forward``: normalised float32 images
``[B, 3, H, W]`` (RGB in [0, 1], then ``(x - input_mean) / input_std`` per channel, the model's own values,
in the metadata) in, logits ``[B, K, H, W]`` out (argmax over K = the class). A fixed-size export takes
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
import io
import json
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from famix.config import ModelConfig
from famix.data.transforms import normalize
from famix.engine import pretrained
from famix.engine.checkpoint import load_segmenter
from famix.engine.distributed import single_process
from famix.engine.exported import METADATA_FILE, import_onnx_tools, jit_quietly, load_exported, read_metadata
from famix.engine.outputs import check_output_path, check_replaceable
from famix.engine.runs import KEY, RunRecord
from famix.io import atomic_path, check_space, remove_stale_temps
from famix.models.segmenter import SegmentationNetwork
from famix.settings import FORMATS, ExportSettings
from famix.version import __version__


class ExportCheck(NamedTuple):
    """An exported model against the eager one on random inputs of ``shapes``."""

    max_abs_diff: float  # max |logit difference| over all inputs, classes and pixels
    agreement: float  # % of pixels with the same argmax
    shapes: list[tuple[int, ...]]  # the inputs checked, [B, 3, H, W] each

    def describe(self) -> str:
        sizes = ", ".join("x".join(map(str, s)) for s in self.shapes)
        return (
            f"max abs logit difference {self.max_abs_diff:.3g}, argmax agreement {self.agreement:.3f} % "
            f"of pixels (inputs {sizes})"
        )


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


def default_output(checkpoint: str | Path, fmt: str) -> Path:
    """Next to the checkpoint: ``runs/x/best.pt`` -> ``runs/x/best.onnx``, ``best.pt2`` or
    ``best.torchscript.pt``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + FORMATS[fmt])


def metadata(
    cfg: ModelConfig,
    output_stride: int,
    fmt: str,
    size: tuple[int, int],
    dynamic: bool,
    pad: int,
    normalization: tuple[tuple[float, ...], tuple[float, ...]],
) -> dict:
    """What a user of the file needs to know, as strings (ONNX metadata_props are str -> str). ``pad``: the
    eager model zero-pads inputs to multiples of it (``SegmentationNetwork.pad_multiple``: a ViT's patch
    size, a ConvNeXt's 32), so a dynamic export takes multiples of it only;
    ``normalization``: the model's (mean, std)."""
    least = 2 * output_stride if dynamic else None
    multiple = pad if dynamic else 1
    shape = f"[B, 3, H, W], any B, H and W >= {least}" if dynamic else f"[1, 3, {size[0]}, {size[1]}]"
    if dynamic and pad > 1:
        shape += f" and multiples of {pad}"
    if pad > 1:
        shape += (
            f" (zero-pad other sizes at the bottom and right to multiples of {pad}, as the eager "
            "model does, and crop the logits back)"
        )
    mean, std = normalization
    return {
        "famix_version": __version__,
        "format": fmt,
        "input": f"images: float32 {shape}, RGB in [0, 1] then (x - input_mean) / input_std per channel",
        "input_mean": json.dumps([float(v) for v in mean]),
        "input_std": json.dumps([float(v) for v in std]),
        "output": "logits: float32 [B, K, H, W], K = num_classes; argmax over K: the class (label_set)",
        "num_classes": str(len(cfg.labels)),
        "class_names": json.dumps(cfg.labels.names),
        "label_set": json.dumps(cfg.labels.to_dict()),  # names, colours, ids, prompts of the classes
        "backbone": cfg.backbone,
        "output_stride": str(output_stride),
        "dynamic": json.dumps(dynamic),
        "size": "dynamic" if dynamic else f"{size[0]}x{size[1]}",
        "size_multiple": str(multiple),
        "min_size": str(least or 1),
        "pad_to_multiple": str(pad),
    }


def check_inputs(
    size: tuple[int, int], multiple: int, dynamic: bool, seed: int = 0, any_size: bool = False
) -> list[torch.Tensor]:
    """Random CLIP-normalised inputs: [1, 3, H, W] twice, or (dynamic) [2, 3, H, W] and a second batch
    size and size, [1, 3, H + m, W + 2m], and (``any_size``) a third, [1, 3, H + 1, W + 3], not a multiple."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    shapes = [(2, 3, h, w), (1, 3, h + multiple, w + 2 * multiple)] if dynamic else [(1, 3, h, w)] * 2
    if any_size:
        shapes.append((1, 3, h + 1, w + 3))
    return [normalize(torch.rand(s, generator=g)) for s in shapes]


def compare(model: nn.Module, exported, inputs: list[torch.Tensor]) -> ExportCheck:
    """Logits of ``exported`` against those of the eager ``model`` on each input (a NaN difference is NaN,
    so it fails any tolerance)."""
    diffs, same, total = [], 0, 0
    with torch.no_grad():
        for x in inputs:
            ref, out = model(x).double(), exported(x).double()  # [B, K, H, W] each
            if out.shape != ref.shape:
                raise ValueError(
                    f"the export returned {tuple(out.shape)} for {tuple(x.shape)}, not {tuple(ref.shape)}"
                )
            diffs.append((out - ref).abs().max())  # torch's max keeps NaN, Python's max() would drop it
            same += (out.argmax(1) == ref.argmax(1)).sum().item()
            total += ref[:, 0].numel()
    diff = torch.stack(diffs).max().item()
    return ExportCheck(diff, 100.0 * same / total, [tuple(x.shape) for x in inputs])


def _takes_any_size(model: SegmentationNetwork, dynamic: bool) -> bool:
    # A ResNet runs any size as it is (convolutions, then resizes to the input's size), and torch.export
    # traces that for symbolic sizes. A ViT's forward pads to multiples of its patch size, a branch on the
    # size that torch.export cannot trace: its export takes multiples, and callers pad as it would.
    return dynamic and model.pad_multiple == 1


def _export_program(model: SegmentationNetwork, example: torch.Tensor, multiple: int, dynamic: bool):
    dynamic_shapes = None
    if dynamic:
        from torch.export import Dim

        dims = {0: Dim("batch", min=1)}
        if _takes_any_size(model, dynamic):
            dims[2], dims[3] = Dim("height", min=2 * multiple), Dim("width", min=2 * multiple)
        else:  # height and width in whole strides (patches)
            dims[2] = multiple * Dim("height_strides", min=2)
            dims[3] = multiple * Dim("width_strides", min=2)
        dynamic_shapes = {"x": dims}
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)


def _write(model: nn.Module, fmt: str, example: torch.Tensor, multiple: int, dynamic: bool, meta: dict, dst):
    if fmt == "torchscript":
        with torch.no_grad(), jit_quietly():
            # Sizes are traced as ops, so any size runs; check_trace=False: export_model checks it.
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(dst), _extra_files={METADATA_FILE: json.dumps(meta)})
        return
    program = _export_program(model, example, multiple, dynamic)
    if fmt == "exported-program":
        with open(dst, "wb") as f:  # a file object: torch.export.save wants paths to end in .pt2
            torch.export.save(program, f, extra_files={METADATA_FILE: json.dumps(meta)})
        return
    with contextlib.redirect_stdout(io.StringIO()):  # the converter's progress lines
        onnx_program = torch.onnx.export(
            program, (example,), dynamo=True, input_names=["images"], output_names=["logits"], verbose=False
        )
    onnx_program.model.metadata_props.update(meta)
    onnx_program.save(str(dst), external_data=False)


def _check_out(out: str | Path, fmt: str, force: bool) -> Path:
    # Before minutes of loading and tracing: a path famix can write, and no file famix must keep.
    out = check_output_path(out, "--out")
    ours = f"{'an' if fmt[0] in 'aeio' else 'a'} {fmt} file written by `famix export`"
    check_replaceable(out, lambda p: read_metadata(p, fmt) is not None, ours, force)
    return out


def _check_tools(fmt: str) -> None:
    if fmt == "onnx":
        import_onnx_tools()  # before minutes of loading and tracing


def export_model(
    model: SegmentationNetwork,
    cfg: ModelConfig,
    out: str | Path,
    settings: ExportSettings,
    record: dict | None = None,
) -> ExportCheck:
    """Export the eval-mode segmenter ``model`` (on the CPU) to ``out`` as ``settings`` say, checked first.
    ``record``: the export's run record, kept in the file's metadata (key ``run``, JSON).

    The file is written to a temporary path, loaded back and compared with ``model`` on
    :func:`check_inputs`; it replaces ``out`` only if the max abs logit difference is <= ``settings.atol``
    and the argmax agreement >= ``settings.min_agreement`` %, else ValueError and nothing is written. An
    existing ``out`` that is not a file of the format from ``famix export`` raises FileExistsError unless
    ``settings.force``.
    """
    s = settings
    fmt, size, dynamic = s.format, s.size, s.dynamic
    _check_tools(fmt)
    out = _check_out(out, fmt, s.force)
    multiple = model.output_stride  # total downsampling: a ResNet's dilated strides, a ViT's patch size
    check_size(size, multiple, dynamic)
    inputs = check_inputs(size, multiple, dynamic, any_size=_takes_any_size(model, dynamic))
    meta = metadata(cfg, multiple, fmt, size, dynamic, model.pad_multiple, model.normalization)
    if record is not None:
        meta["run"] = json.dumps(record, sort_keys=True)
    remove_stale_temps(out)  # what a killed export left behind
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    check_space(out, weights + (1 << 20))  # the weights and the graph: not written on a full disk
    with atomic_path(out) as tmp:
        try:
            _write(model, fmt, inputs[0], multiple, dynamic, meta, tmp)
        except Exception as e:  # torch.export / the ONNX converter raise many types
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise ValueError(
                f"torch could not export the model as {fmt} ({type(e).__name__}: {first}); "
                "try another --format"
            ) from e
        check = compare(model, load_exported(tmp, fmt), inputs)
        if not (check.max_abs_diff <= s.atol and check.agreement >= s.min_agreement):
            raise ValueError(
                f"the {fmt} export does not match the checkpoint's model: {check.describe()}, tolerance "
                f"--atol {s.atol:g} and --min-agreement {s.min_agreement:g} %; nothing written. Try another "
                "--format, or pass a larger --atol / smaller --min-agreement to accept it"
            )
    return check


def run(
    checkpoint: str | Path, settings: ExportSettings, out: str | Path | None = None, say=print
) -> tuple[Path, ExportCheck | None]:
    """Export ``checkpoint``'s segmenter as ``settings`` say to ``out`` (default: beside the checkpoint,
    :func:`default_output`); returns the file and the check it passed (None: the file already held this
    export, nothing was written)."""
    single_process("famix export", "every rank would write the same file")
    fmt = settings.format
    out = Path(out) if out is not None else default_output(pretrained.base_path(checkpoint), fmt)
    record = RunRecord("export", settings.record(), {"checkpoint": pretrained.fingerprint(checkpoint)})
    meta = read_metadata(out, fmt) if out.is_file() else None
    if meta is not None and KEY in meta and not record.changes(json.loads(meta[KEY])):
        say(f"famix export: {out} holds this export of {checkpoint} already: nothing to do")
        return out, None
    _check_tools(fmt)
    if out.resolve() == Path(checkpoint).resolve():
        raise ValueError(f"--out {out} is the checkpoint itself: pass another path")
    _check_out(out, fmt, settings.force)
    model, cfg = load_segmenter(checkpoint, device="cpu")
    return out, export_model(model, cfg, out, settings, record.to_dict())
