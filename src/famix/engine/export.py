"""``famix export``: a checkpoint's segmenter as ONNX, a torch.export program (``.pt2``) or TorchScript,
checked against the eager model before the file is written; and :class:`OnnxSegmenter`, an ONNX file
run through ONNX Runtime as a model ``famix predict`` can use.

Every exported model has the contract of ``Segmenter.forward``: CLIP-normalised float32 images
``[B, 3, H, W]`` (RGB in [0, 1], then ``(x - CLIP_MEAN) / CLIP_STD`` per channel) in, logits
``[B, K, H, W]`` out (argmax over K = trainId). A fixed-size export takes ``[1, 3, H, W]`` only;
``dynamic=True`` takes any batch and any height and width that are multiples of the output stride,
at least two strides. The file carries this in its metadata (ONNX ``metadata_props``; a
``famix.json`` extra file in ``.pt2`` and TorchScript archives).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from famix import __version__
from famix.config import ModelConfig
from famix.data.transforms import CLIP_MEAN, CLIP_STD, normalize
from famix.io import atomic_path

# Format name -> file name ending (the default output is the checkpoint's stem + this).
FORMATS = {"onnx": ".onnx", "exported-program": ".pt2", "torchscript": ".torchscript.pt"}
# The check an export must pass to be written: float32 reorderings give ~1e-7 relative differences;
# 1e-3 on the logits is far above that and far below what changes a decision.
ATOL = 1e-3
MIN_AGREEMENT = 99.9  # % of pixels whose argmax (trainId) equals the eager model's
METADATA_FILE = "famix.json"  # the metadata's name inside .pt2 / TorchScript archives
INSTALL_HINT = 'pip install "famix[export]"'


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


def import_onnx_tools(runtime_only: bool = False):
    """Import onnxruntime (and, to export, onnx and onnxscript), or say how to install them."""
    try:
        import onnxruntime

        if not runtime_only:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401  (torch.onnx.export's converter)
    except ImportError as e:
        what = ".onnx files need" if runtime_only else "ONNX export needs"
        raise ImportError(
            f"{what} onnxruntime (and onnx, onnxscript), an optional extra: {INSTALL_HINT}"
        ) from e
    return onnxruntime


def parse_size(text: str) -> tuple[int, int]:
    """``"512x1024"`` -> (512, 1024); a single number is a square."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not m:
        raise ValueError(f"--size must be HEIGHTxWIDTH in pixels, e.g. 512x1024, got {text!r}")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


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


def metadata(cfg: ModelConfig, output_stride: int, fmt: str, size: tuple[int, int], dynamic: bool) -> dict:
    """What a user of the file needs to know, as strings (ONNX metadata_props are str -> str)."""
    least = 2 * output_stride if dynamic else None
    shape = (
        f"[B, 3, H, W], any B, H and W multiples of {output_stride} and >= {least}"
        if dynamic
        else f"[1, 3, {size[0]}, {size[1]}]"
    )
    return {
        "famix_version": __version__,
        "format": fmt,
        "input": f"images: float32 {shape}, RGB in [0, 1] then (x - input_mean) / input_std per channel",
        "input_mean": json.dumps(list(CLIP_MEAN)),
        "input_std": json.dumps(list(CLIP_STD)),
        "output": "logits: float32 [B, K, H, W], K = num_classes; argmax over K is the trainId",
        "num_classes": str(cfg.num_classes),
        "class_names": json.dumps(list(cfg.class_names)),
        "backbone": cfg.backbone,
        "output_stride": str(output_stride),
        "dynamic": json.dumps(dynamic),
        "size": "dynamic" if dynamic else f"{size[0]}x{size[1]}",
        "size_multiple": str(output_stride if dynamic else 1),
        "min_size": str(least or 1),
    }


def check_inputs(size: tuple[int, int], multiple: int, dynamic: bool, seed: int = 0) -> list[torch.Tensor]:
    """Two random CLIP-normalised inputs: [1, 3, H, W] twice, or (dynamic) [2, 3, H, W] and a second
    batch size and size, [1, 3, H + m, W + 2m]."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    shapes = [(2, 3, h, w), (1, 3, h + multiple, w + 2 * multiple)] if dynamic else [(1, 3, h, w)] * 2
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


@contextlib.contextmanager
def _jit_quietly():
    # One FutureWarning per torch.jit call ("deprecated"): the user chose the format, --help says so.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        yield


def _export_program(model: nn.Module, example: torch.Tensor, multiple: int, dynamic: bool):
    dynamic_shapes = None
    if dynamic:
        from torch.export import Dim

        # Height and width in whole strides: every resize in the network then has an exact size.
        dims = {0: Dim("batch", min=1), 2: multiple * Dim("height_strides", min=2)}
        dims[3] = multiple * Dim("width_strides", min=2)
        dynamic_shapes = {"x": dims}
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)


def _write(model: nn.Module, fmt: str, example: torch.Tensor, multiple: int, dynamic: bool, meta: dict, dst):
    if fmt == "torchscript":
        with torch.no_grad(), _jit_quietly():
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


def load_exported(path: str | Path, fmt: str, device: str | torch.device = "cpu"):
    """An exported file as a callable: images [B, 3, H, W] -> logits [B, K, H, W].

    ``.pt2`` and TorchScript files unpickle code: load only files you trust (ONNX files do not).
    """
    if fmt == "onnx":
        return OnnxSegmenter(path, device)
    with open(path, "rb") as f:
        if fmt == "exported-program":
            return torch.export.load(f).module()
        with _jit_quietly():
            return torch.jit.load(f, map_location=device)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "onnx":
        import_onnx_tools()  # before minutes of loading and tracing


def export_model(
    model: nn.Module,
    cfg: ModelConfig,
    out: str | Path,
    fmt: str,
    size: tuple[int, int],
    dynamic: bool = False,
    atol: float = ATOL,
    min_agreement: float = MIN_AGREEMENT,
) -> ExportCheck:
    """Export the eval-mode segmenter ``model`` (on the CPU) as ``fmt`` to ``out``, checked first.

    The file is written to a temporary path, loaded back and compared with ``model`` on
    :func:`check_inputs`; it replaces ``out`` only if the max abs logit difference is <= ``atol``
    and the argmax agreement >= ``min_agreement`` %, else ValueError and nothing is written.
    """
    _check_format(fmt)
    multiple = model.output_stride  # total downsampling: a ResNet's dilated strides, a ViT's patch size
    check_size(size, multiple, dynamic)
    inputs = check_inputs(size, multiple, dynamic)
    meta = metadata(cfg, multiple, fmt, size, dynamic)
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
        if not (check.max_abs_diff <= atol and check.agreement >= min_agreement):
            raise ValueError(
                f"the {fmt} export does not match the checkpoint's model: {check.describe()}, tolerance "
                f"--atol {atol:g} and --min-agreement {min_agreement:g} %; nothing written. Try another "
                "--format, or pass a larger --atol / smaller --min-agreement to accept it"
            )
    return check


def export_checkpoint(
    checkpoint: str | Path,
    fmt: str,
    size: tuple[int, int],
    dynamic: bool = False,
    out: str | Path | None = None,
    atol: float = ATOL,
    min_agreement: float = MIN_AGREEMENT,
) -> tuple[Path, ExportCheck]:
    """:func:`export_model` of a checkpoint's segmenter (to :func:`default_output` unless ``out``)."""
    from famix.engine.checkpoint import load_segmenter

    _check_format(fmt)
    out = Path(out) if out is not None else default_output(checkpoint, fmt)
    if out.resolve() == Path(checkpoint).resolve():
        raise ValueError(f"--out {out} is the checkpoint itself: pass another path")
    model, cfg = load_segmenter(checkpoint, device="cpu")
    return out, export_model(model, cfg, out, fmt, size, dynamic, atol, min_agreement)


class OnnxSegmenter(nn.Module):
    """An exported ``.onnx`` segmenter run by ONNX Runtime, usable wherever a segmenter is called:
    normalised images [B, 3, H, W] (a torch tensor on any device) -> logits [B, K, H, W] on that device.

    Sizes the file cannot take raise ValueError saying which it takes. A fixed-batch file is run one
    chunk of its batch at a time. Autocast does not apply: ONNX Runtime computes in the file's float32.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        super().__init__()
        ort = import_onnx_tools(runtime_only=True)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"ONNX file {path} not found: write one with `famix export CKPT --format onnx`"
            )
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"cannot load ONNX file {path}: {str(e).strip()[:300]}") from e
        self.path = path
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        (inp,) = self.session.get_inputs()
        self.input_name = inp.name
        self.shape = list(inp.shape)  # ints where fixed, names where dynamic
        self.multiple = int(self.metadata.get("size_multiple", 1))
        self.min_size = int(self.metadata.get("min_size", 1))

    def _check(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        fixed = [d if isinstance(d, int) else None for d in self.shape[2:]]
        if any(f is not None and f != n for f, n in zip(fixed, (h, w), strict=True)):
            raise ValueError(
                f"{self.path.name} takes {fixed[0]}x{fixed[1]} images only, got {h}x{w}: resize the images, "
                "or re-export with --dynamic (or --size HxW)"
            )
        if any(n % self.multiple or n < self.min_size for n in (h, w)):
            raise ValueError(
                f"{self.path.name} takes heights and widths that are multiples of {self.multiple} (at least "
                f"{self.min_size}), got {h}x{w}: crop or resize the images, choose --scale/--window so the "
                "sizes fit, or predict with the checkpoint"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] CLIP-normalised -> logits [B, K, H, W], float32, on x's device."""
        self._check(x)
        batch = self.shape[0] if isinstance(self.shape[0], int) else x.shape[0]
        outs = []
        for chunk in x.float().split(batch):  # [b, 3, H, W]
            if chunk.shape[0] != batch:
                raise ValueError(f"{self.path.name} takes batches of {batch}, got {chunk.shape[0]}")
            arr = chunk.detach().cpu().contiguous().numpy()
            outs.append(torch.from_numpy(self.session.run(None, {self.input_name: arr})[0]))
        return torch.cat(outs).to(x.device)
