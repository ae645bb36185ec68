"""Static int8 quantisation of an ONNX segmenter written by ``famix export``, by ONNX Runtime's own tools
(``onnxruntime.quantization``): QDQ format, int8 per-channel weights, uint8 activations (the x86
recommendation), activation ranges calibrated by MinMax (or a histogram's percentile / entropy).

Two ways to calibrate the activation ranges:

- "source" (``restyle=None``): every tensor on the calibration images as they are.
- "styles" (``restyle`` given): the file must carry a second output ``style_map`` [B, C, h, w], the feature
  map at FAMix's style site. Tensors up to it are calibrated on the images; tensors downstream of it on
  what the network computes when the style map of batch i is replaced by ``restyle(i, style_map_i)``, as
  FAMix trains: the downstream subgraph (from the style map to the real outputs) is cut out and
  calibrated on the restyled maps, and its ranges replace the source ones.

The int8 file never has the ``style_map`` output; it keeps the source's inputs, outputs and metadata, and
adds ``quantization`` (JSON) to the metadata.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from famix.engine.amp import int8_dot_product
from famix.engine.exported import import_onnx_tools

STYLE_OUTPUT = "style_map"  # the optional second output of a styles-calibratable export
METHODS = ("minmax", "percentile", "entropy")
Restyle = Callable[[int, np.ndarray], np.ndarray]  # (batch index, style map [B, C, h, w]) -> same shape


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_onnx` wrote: ``nodes_quantized`` counts QuantizeLinear / DequantizeLinear (and
    any QLinear*) nodes of the int8 file; sizes are in bytes."""

    batches: int
    method: str
    restyled: bool
    nodes_quantized: int
    size_bytes: int
    src_size_bytes: int


@contextlib.contextmanager
def _quietly() -> Iterator[None]:
    # ORT's quantisation tools print progress and log warnings through the root logger ("consider
    # pre-processing", per-tensor notes); logging.warning() with no handler would also install a stderr
    # handler for good (basicConfig), which a NullHandler prevents. The CLI shows famix's lines only.
    root = logging.getLogger()
    level, null = root.level, logging.NullHandler()
    root.addHandler(null)
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
        root.removeHandler(null)


def _calibration_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}: pass one of {', '.join(METHODS)}")
    # ORT's settings for each (create_calibrator's defaults): percentile 99.999 of |x| on 2048 bins; entropy
    # on 128 bins, which often keeps the min-max range.
    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}.get(
        method, CalibrationMethod.Entropy
    )


def _check_calibration(src: Path, model, calibration: Sequence[np.ndarray]) -> str:
    """The name of ``model``'s one input, after checking that every calibration batch has its dtype and
    fits its shape."""
    from onnx.helper import tensor_dtype_to_np_dtype

    if len(calibration) == 0:
        raise ValueError(
            f"no calibration images: int8 quantisation of {src} needs at least one batch of its input "
            "(pass --calibration-images or --calibration-data)"
        )
    if len(model.graph.input) != 1:
        names = [i.name for i in model.graph.input]
        raise ValueError(f"{src} has inputs {names}: famix quantises segmenters with one input")
    graph_input = model.graph.input[0]
    tensor = graph_input.type.tensor_type
    dtype = tensor_dtype_to_np_dtype(tensor.elem_type)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]  # None: any size
    for i, batch in enumerate(calibration):
        batch = np.asarray(batch)
        fits = batch.ndim == len(dims) and all(d in (None, n) for d, n in zip(dims, batch.shape, strict=True))
        if batch.dtype != dtype or not fits:
            shape = "x".join("?" if d is None else str(d) for d in dims)
            raise ValueError(
                f"calibration batch {i} is {batch.dtype} {list(batch.shape)}, but {src} takes "
                f"'{graph_input.name}' as {dtype} [{shape}]: pass arrays as the model's input"
            )
    return graph_input.name


class _Feeds:
    """A CalibrationDataReader (``get_next``) over a list of feed dicts, each ``{input name: array}``."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _session(path: Path):
    ort = import_onnx_tools(runtime_only=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    # As ORT's calibrator runs its sessions: the style maps then match bit for bit what it would see.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _tensor_ranges(path: Path, feeds: list[dict[str, np.ndarray]], method: str, tmp: Path):
    """ORT's calibration of the model at ``path`` on ``feeds`` (a TensorsData), as quantize_static does it:
    the inputs and outputs of every node of a quantisable op type."""
    from onnxruntime.quantization import create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    op_types = sorted(set(QDQRegistry) | set(QLinearOpsRegistry))
    augmented = tmp / f"{path.stem}.augmented.onnx"
    calibrator = create_calibrator(path, op_types, str(augmented), _calibration_method(method))
    calibrator.collect_data(_Feeds(feeds))
    return calibrator.compute_data()


def _style_tensor(model) -> str:
    """The tensor the network consumes as its style map: ``style_map``, or what it copies through Identity
    nodes (an exporter may add them when an output is also used inside the graph)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    name = STYLE_OUTPUT
    while name in producer and producer[name].op_type == "Identity":
        name = producer[name].input[0]
    return name


def _extract(model, inputs: list[str], outputs: list[str], path: Path) -> Path:
    """The part of ``model`` that computes ``outputs`` from ``inputs``, written to ``path``."""
    import onnx
    from onnx.utils import Extractor

    sub = Extractor(onnx.shape_inference.infer_shapes(model)).extract_model(inputs, outputs)
    onnx.save(sub, str(path))
    return path


def _restyled_feeds(
    src: Path, feeds: list[dict[str, np.ndarray]], style: str, restyle: Restyle
) -> list[dict[str, np.ndarray]]:
    """The downstream subgraph's feeds: each batch's images and its restyled style map."""
    session = _session(src)
    out = []
    for i, feed in enumerate(feeds):
        (style_map,) = session.run([STYLE_OUTPUT], feed)  # [B, C, h, w]
        restyled = np.asarray(restyle(i, style_map), dtype=np.float32)
        if restyled.shape != style_map.shape:
            raise ValueError(
                f"restyle returned {restyled.shape} for the style map {style_map.shape} of calibration "
                f"batch {i}: it must keep the shape"
            )
        out.append({**feed, style: restyled})
    return out


def _styled_ranges(src: Path, model, quantised: Path, feeds, restyle: Restyle, method: str, tmp: Path):
    """Ranges of ``quantised`` (``src``, loaded as ``model``, less its style output) calibrated on ``feeds``,
    those downstream of the style map replaced by the downstream subgraph's on the restyled maps."""
    from onnxruntime.quantization import TensorsData

    source = _tensor_ranges(quantised, feeds, method, tmp)
    style = _style_tensor(model)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output if o.name != STYLE_OUTPUT]
    downstream = _extract(model, [style, *inputs], outputs, tmp / "downstream.onnx")
    styled = _tensor_ranges(downstream, _restyled_feeds(src, feeds, style, restyle), method, tmp)
    # The style map itself (its producer's output) and the images keep their source ranges.
    merged = dict(source.items())
    merged.update((k, v) for k, v in styled.items() if k not in (style, *inputs) and k in merged)
    return TensorsData(source.calibration_method, merged)


def _prepare(src: Path, calibration: Sequence[np.ndarray], restyle: Restyle | None, tmp: Path):
    """Load ``src``, check the arguments, write the model to quantise (src less ``style_map``, and the
    nodes only it needed) to ``tmp``; returns (src model, that file, feeds)."""
    import onnx

    model = onnx.load(str(src))
    name = _check_calibration(src, model, calibration)
    outputs = [o.name for o in model.graph.output]
    if restyle is not None and STYLE_OUTPUT not in outputs:
        raise ValueError(
            f"{src} has no '{STYLE_OUTPUT}' output (it has {outputs}): styles calibration needs a file "
            "exported with its style map; calibrate on the source images instead"
        )
    inputs = [i.name for i in model.graph.input]
    quantised = _extract(model, inputs, [o for o in outputs if o != STYLE_OUTPUT], tmp / "model.onnx")
    return model, quantised, [{name: np.ascontiguousarray(batch)} for batch in calibration]


def _ranges(src: Path, calibration, restyle: Restyle | None, method: str, tmp: Path):
    """(the model to quantise, written in ``tmp``; its TensorsData)."""
    model, quantised, feeds = _prepare(src, calibration, restyle, tmp)
    if restyle is None:
        return quantised, _tensor_ranges(quantised, feeds, method, tmp)
    return quantised, _styled_ranges(src, model, quantised, feeds, restyle, method, tmp)


def calibration_ranges(
    src: str | Path,
    calibration: Sequence[np.ndarray],
    restyle: Restyle | None = None,
    method: str = "minmax",
) -> dict[str, tuple[float, float]]:
    """The (low, high) activation range of every calibrated tensor of ``src``, by name, as
    :func:`quantize_onnx` quantises with them (see the module docstring for ``restyle``)."""
    import_onnx_tools()
    _calibration_method(method)
    with tempfile.TemporaryDirectory(prefix="famix-quantize-") as tmp, _quietly():
        _, ranges = _ranges(Path(src), calibration, restyle, method, Path(tmp))
    return {k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1]))) for k, v in ranges.items()}


def _nodes_quantized(model) -> int:
    ops = [node.op_type for node in model.graph.node]
    return sum(op in ("QuantizeLinear", "DequantizeLinear") or op.startswith("QLinear") for op in ops)


def quantize_onnx(
    src: str | Path,
    dst: str | Path,
    calibration: Sequence[np.ndarray],
    restyle: Restyle | None = None,
    method: str = "minmax",
    reduce_range: bool | None = None,
) -> QuantizeReport:
    """Quantise the fp32 ONNX segmenter ``src`` to int8 at ``dst`` (QDQ, int8 per-channel weights, uint8
    activations), its activation ranges calibrated by ``method`` on ``calibration`` (the graph input, one
    array per batch), "styles" calibration when ``restyle`` is given (module docstring). ``dst`` keeps
    ``src``'s input, outputs (less ``style_map``) and metadata, plus ``quantization`` (JSON).

    ``reduce_range``: weights in 7 bits (-64..64), ONNX Runtime's advice for CPUs without VNNI, whose uint8 x
    int8 kernel (``vpmaddubsw``) saturates 16-bit pair sums of full-range values; None: so where this CPU has
    no VNNI (``engine.amp.int8_dot_product``), full 8 bits where it has."""
    import_onnx_tools()
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static, save_tensors_data

    src, dst, calibrate_method = Path(src), Path(dst), _calibration_method(method)
    if reduce_range is None:
        reduce_range = not int8_dot_product()
    with tempfile.TemporaryDirectory(prefix="famix-quantize-") as tmp, _quietly():
        tmp = Path(tmp)
        model, ranges = _ranges(src, calibration, restyle, method, tmp)
        # The ranges reach quantize_static as its calibration cache: it then quantises without calibrating.
        save_tensors_data(ranges, tmp / "ranges.json")
        quantize_static(
            str(model),
            str(tmp / "int8.onnx"),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate_method,
            calibration_cache_path=str(tmp / "ranges.json"),
            reduce_range=reduce_range,
        )
        int8 = onnx.load(str(tmp / "int8.onnx"))
    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    meta["quantization"] = json.dumps(
        {
            "format": "QDQ",
            "weights": "int8 per-channel" + (", 7-bit range (-64..64)" if reduce_range else ""),
            "activations": "uint8",
            "calibration_batches": len(calibration),
            "method": method,
            "calibrated_on": "source" if restyle is None else "styles",
        }
    )
    onnx.helper.set_model_props(int8, meta)
    onnx.save(int8, str(dst))
    return QuantizeReport(
        batches=len(calibration),
        method=method,
        restyled=restyle is not None,
        nodes_quantized=_nodes_quantized(int8),
        size_bytes=dst.stat().st_size,
        src_size_bytes=src.stat().st_size,
    )
