"""Files written by ``famix export``, read back: which kind of archive a file is, the famix metadata it
carries, and the exported model as a callable, :class:`OnnxSegmenter` for ONNX files (run by ONNX
Runtime; what ``famix predict`` uses). Writing them is ``stages/export.py``.

The contract of every exported model is that of ``SegmentationNetwork.forward``: CLIP-normalised float32
images ``[B, 3, H, W]`` in, logits ``[B, K, H, W]`` out; the sizes a file takes are in its metadata
(``size_multiple``, ``min_size``, and ``pad_to_multiple`` for ViTs, which zero-pad other sizes as the
eager model does).
"""

from __future__ import annotations

import contextlib
import json
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from famix.models.towers.base import pad_to_multiple
from famix.normalization import OPENAI_NORMALIZATION

METADATA_FILE = "famix.json"  # the metadata's name inside .pt2 / TorchScript archives
INSTALL_HINT = 'pip install "famix[export]"'
# What archive_format returns -> its name in messages.
ARCHIVE_NAMES = {"torchscript": "TorchScript", "exported-program": "torch.export (.pt2)"}


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


@contextlib.contextmanager
def jit_quietly():
    """Silence the FutureWarning every torch.jit call gives ("deprecated"): the user chose the format."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        yield


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return []


def archive_format(path: str | Path) -> str | None:
    """``"torchscript"`` or ``"exported-program"`` for a TorchScript or torch.export zip archive (famix's or
    not), None for anything else (a ``torch.save`` checkpoint is a zip too, but holds neither record).

    Read from the zip's table of contents only: nothing is unpickled. TorchScript archives carry a
    ``constants.pkl`` record and ``code/``; ``.pt2`` archives an ``archive_format`` record.
    """
    for name in _zip_names(Path(path)):
        parts = name.split("/")
        if parts[-1] == "constants.pkl" or "code" in parts[1:-1]:
            return "torchscript"
        if parts[-1] == "archive_format" and len(parts) <= 2:
            return "exported-program"
    return None


def read_metadata(path: str | Path, fmt: str) -> dict | None:
    """The famix metadata of ``path`` if it is a ``fmt`` file written by ``famix export``, else None.

    Nothing runs: ONNX files are parsed (without their external data), archives read as zips.
    """
    path = Path(path)
    meta = None
    if fmt == "onnx":
        with contextlib.suppress(Exception):  # not protobuf, or not ONNX: not ours
            import onnx

            model = onnx.load(str(path), load_external_data=False)
            meta = {p.key: p.value for p in model.metadata_props}
    elif archive_format(path) == fmt:
        with contextlib.suppress(Exception), zipfile.ZipFile(path) as zf:
            name = next(n for n in zf.namelist() if n.split("/")[-2:] == ["extra", METADATA_FILE])
            meta = json.loads(zf.read(name))
    if isinstance(meta, dict) and meta.get("format") == fmt and "famix_version" in meta:
        return meta
    return None


def load_exported(path: str | Path, fmt: str, device: str | torch.device = "cpu"):
    """An exported file as a callable: images [B, 3, H, W] -> logits [B, K, H, W].

    ``.pt2`` and TorchScript files unpickle code: load only files you trust (ONNX files do not).
    """
    if fmt == "onnx":
        return OnnxSegmenter(path, device)
    with open(path, "rb") as f:
        if fmt == "exported-program":
            return torch.export.load(f).module()
        with jit_quietly():
            return torch.jit.load(f, map_location=device)


class OnnxSegmenter(nn.Module):
    """An exported ``.onnx`` segmenter run by ONNX Runtime, usable wherever a segmenter is called:
    normalised images [B, 3, H, W] (a torch tensor on any device) -> logits [B, K, H, W] on that device.

    A ViT file (metadata ``pad_to_multiple`` P > 1) gets inputs zero-padded at the bottom and right to
    multiples of P and its logits cropped back, as ``SegmentationNetwork.forward`` does. Sizes the file
    cannot take raise ValueError saying which it takes. A fixed-batch file is run one chunk of its batch at
    a time. Autocast does not apply: ONNX Runtime computes in the file's precision (float32, or int8 for a
    quantised file). An ``ids`` file (uint8 pixels in, class ids out) gets the images back as uint8 (exact
    for images that were uint8) and returns one-hot "logits" of its ids, so the argmax is its answer and
    test-time averaging is a vote. ``threads``: ONNX Runtime's intra-op threads (None: its default).
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None):
        super().__init__()
        ort = import_onnx_tools(runtime_only=True)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"ONNX file {path} not found: write one with `famix export CKPT --format onnx`"
            )
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda":  # TensorRT's, then CUDA's, where this onnxruntime has them
            available = ort.get_available_providers()
            gpu = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
            providers = [p for p in gpu if p in available] + providers
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"cannot load ONNX file {path}: {str(e).strip()[:300]}") from e
        self.path = path
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        (inp,) = self.session.get_inputs()
        self.input_name = inp.name
        self.ids = self.metadata.get("graph") == "ids"  # uint8 [B, H, W, 3] -> ids [B, H, W]
        shape = list(inp.shape)  # ints where fixed, names where dynamic
        self.shape = [shape[0], shape[3], shape[1], shape[2]] if self.ids else shape  # as [B, 3, H, W]
        self.num_classes = int(self.metadata.get("num_classes", 0))
        self.multiple = int(self.metadata.get("size_multiple", 1))
        self.min_size = int(self.metadata.get("min_size", 1))
        self.pad = int(self.metadata.get("pad_to_multiple", 1))  # files before famix wrote it: no padding
        # the (mean, std) the model was trained with; every file famix wrote names them
        self.normalization = tuple(
            tuple(json.loads(self.metadata[k])) if k in self.metadata else default
            for k, default in (
                ("input_mean", OPENAI_NORMALIZATION.mean),
                ("input_std", OPENAI_NORMALIZATION.std),
            )
        )

    def _check(self, x: torch.Tensor, given: tuple[int, int]) -> None:
        # x: the (padded) input the file will see; given: the caller's size, named in errors.
        h, w = x.shape[-2:]
        fixed = [d if isinstance(d, int) else None for d in self.shape[2:]]
        if any(f is not None and f != n for f, n in zip(fixed, (h, w), strict=True)):
            raise ValueError(
                f"{self.path.name} takes {fixed[0]}x{fixed[1]} images only, got {given[0]}x{given[1]}: "
                "resize the images, or re-export with --dynamic (or --size HxW)"
            )
        if any(n < self.min_size for n in (h, w)):
            raise ValueError(
                f"{self.path.name} takes heights and widths of at least {self.min_size}, got "
                f"{given[0]}x{given[1]}: resize the images, choose --scale/--window so the sizes fit, or "
                "predict with the checkpoint"
            )
        if any(n % self.multiple for n in (h, w)):
            raise ValueError(
                f"{self.path.name} takes heights and widths that are multiples of {self.multiple} only, got "
                f"{given[0]}x{given[1]}: re-export it with this famix version (`famix export CKPT "
                "--dynamic`) to take any size, crop or resize the images, or predict with the checkpoint"
            )

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        # normalised [b, 3, H, W] -> the uint8 RGB [b, H, W, 3] it was made from (exact for uint8 images)
        mean, std = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in self.normalization)
        rgb = (x.double() * std + mean) * 255.0
        return rgb.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] normalised with ``normalization`` -> logits [B, K, H, W] (float32, x's device)."""
        h, w = x.shape[-2:]
        if self.pad > 1:
            x = pad_to_multiple(x, self.pad)  # [B, 3, H', W'], H' and W' multiples of the patch size
        self._check(x, (h, w))
        batch = self.shape[0] if isinstance(self.shape[0], int) else x.shape[0]
        outs = []
        for chunk in x.float().split(batch):  # [b, 3, H', W']
            if chunk.shape[0] != batch:
                raise ValueError(f"{self.path.name} takes batches of {batch}, got {chunk.shape[0]}")
            chunk = chunk.detach().cpu()
            arr = (self._pixels(chunk) if self.ids else chunk.contiguous()).numpy()
            out = torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])
            if self.ids:  # ids [b, H', W'] -> one-hot [b, K, H', W']
                out = F.one_hot(out.long(), self.num_classes).permute(0, 3, 1, 2).float()
            outs.append(out)
        return torch.cat(outs)[..., :h, :w].to(x.device)  # [B, K, H, W]

    def checkpoint_view(self) -> dict:
        """The file as famix's stages read a checkpoint dict: the model config its metadata gives (backbone,
        label set, normalisation; no weights) and its precision (ONNX Runtime's own: "off", no autocast)."""
        labels = json.loads(self.metadata["label_set"]) if "label_set" in self.metadata else None
        names = json.loads(self.metadata.get("class_names", "null"))
        model = {
            "backbone": self.metadata.get("backbone", "RN50"),
            "classes": labels,
            **({"class_names": names, "num_classes": len(names)} if names else {}),
            "mean": list(self.normalization[0]),
            "std": list(self.normalization[1]),
        }
        return {"config": {"model": model}, "run": {"settings": {"run": {"amp": "off"}}}}
