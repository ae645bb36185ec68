"""engine/quantize.py: static int8 quantisation of exported ONNX segmenters by onnxruntime.quantization.

The fp32 files are exported here from a tiny-rn segmenter (random weights, seed 0) as ``famix export``
writes ONNX, plus the second output ``style_map`` that styles calibration needs; the int8 files are run
by bare onnxruntime. Calibration: 4 random normalised 64x64 images; held-out checks on 4 others.
"""

import contextlib
import io
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from famix.config import ModelConfig
from famix.engine.amp import int8_dot_product
from famix.engine.quantize import QuantizeReport, calibration_ranges, quantize_onnx
from famix.models.build import build_segmenter

SIZE = 64
META = {"famix.test": "kept"}
# Measured on tiny-rn, 4 held-out images (MinMax, 4 calibration images): 98.6 % of pixels keep their argmax
# (98.4 to 98.8 % per image), relative L2 error of the logits 0.008; the int8 file is 0.256 of the fp32 one.
# Calibrated on maps restyled x100 instead (ranges 100x too wide), the same checks give 54 % and 0.26.
MIN_AGREEMENT = 0.95
# The ids graph below (uint8 noise pixels, 2 calibration batches of 2, run at 64x96): 96.0 % of ids agree.
MIN_IDS_AGREEMENT = 0.9
MAX_RELATIVE_ERROR = 0.03
MAX_SIZE_RATIO = 0.3


class WithStyleMap(nn.Module):
    """The segmenter with its style map [B, C, H/4, W/4] as a second output: normalised images [B, 3, H, W]
    to logits [B, K, H, W], or (``ids``, as the export stage's ids graph) pixels [B, H, W, 3] uint8 to class
    ids [B, H, W] uint8."""

    def __init__(self, net: nn.Module, ids: bool = False):
        super().__init__()
        self.net, self.ids = net, ids
        mean, std = net.normalization
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        box = []
        if self.ids:
            x = (x.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
        logits = self.net(x, restyle=lambda f: box.append(f) or f)
        return (logits.argmax(1).to(torch.uint8) if self.ids else logits), box[0]


def export(net: nn.Module, path, ids: bool = False, dynamic: bool = False):
    """Export as the export stage does (torch.export, then the dynamo ONNX converter), with the style map."""
    x = torch.randn(2 if dynamic else 1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    if ids:
        x = pixels(x)
    shapes = None
    if dynamic:
        from torch.export import Dim

        h, w = (1, 2) if ids else (2, 3)
        shapes = {"x": {0: Dim("batch", min=1), h: Dim("height", min=32), w: Dim("width", min=32)}}
    with torch.no_grad():
        program = torch.export.export(WithStyleMap(net, ids).eval(), (x,), dynamic_shapes=shapes)
    with contextlib.redirect_stdout(io.StringIO()):
        outputs = ["ids" if ids else "logits", "style_map"]
        onnx_program = torch.onnx.export(
            program, (x,), dynamo=True, input_names=["images"], output_names=outputs
        )
    onnx_program.model.metadata_props.update(META)
    onnx_program.save(str(path), external_data=False)
    return path


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Random-looking uint8 pixels [B, H, W, 3] from normal noise [B, 3, H, W]."""
    return (x.permute(0, 2, 3, 1) * 48 + 128).clamp(0, 255).to(torch.uint8)


def images(n: int, seed: int, batch: int = 1, width: int = SIZE) -> list[np.ndarray]:
    """``n`` batches of random normalised images [batch, 3, SIZE, width] float32."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, SIZE, width, generator=g).numpy() for _ in range(n)]


@pytest.fixture(scope="module")
def net():
    return build_segmenter(ModelConfig(backbone="tiny-rn"), seed=0).eval()


@pytest.fixture(scope="module")
def styled(net, tmp_path_factory):
    """fp32 file with outputs logits and style_map, 1x3x64x64 input."""
    return export(net, tmp_path_factory.mktemp("fp32") / "styled.onnx")


@pytest.fixture(scope="module")
def plain(styled, tmp_path_factory):
    """The same model without the style_map output."""
    model = onnx.load(str(styled))
    model.graph.output.remove(next(o for o in model.graph.output if o.name == "style_map"))
    path = tmp_path_factory.mktemp("fp32") / "plain.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def int8(styled, tmp_path_factory):
    """(path, report) of styled.onnx quantised with source calibration."""
    dst = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    return dst, quantize_onnx(styled, dst, images(4, seed=0))


def logits(path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"images": x})[
        0
    ]


def test_int8_file_runs_in_bare_onnxruntime(styled, int8):
    dst, report = int8
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits"]  # no style_map
    (out,) = session.run(None, {"images": images(1, seed=5)[0]})
    assert out.shape == (1, 19, SIZE, SIZE) and out.dtype == np.float32

    model = onnx.load(str(dst))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["famix.test"] == "kept"
    assert json.loads(meta["quantization"]) == {
        "format": "QDQ",
        # 7-bit weights where this CPU has no VNNI (ONNX Runtime's int8 kernels would saturate)
        "weights": "int8 per-channel" + ("" if int8_dot_product() else ", 7-bit range (-64..64)"),
        "activations": "uint8",
        "calibration_batches": 4,
        "method": "minmax",
        "calibrated_on": "source",
    }
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert report == QuantizeReport(
        batches=4,
        method="minmax",
        restyled=False,
        nodes_quantized=ops.count("QuantizeLinear") + ops.count("DequantizeLinear"),
        size_bytes=dst.stat().st_size,
        src_size_bytes=styled.stat().st_size,
    )

    # Every Conv weight reaches its Conv through a DequantizeLinear of int8 values with one scale per
    # output channel; activations are quantised to uint8.
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 34
    for conv in convs:
        dq = producer[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert weight.dtype == np.int8 and weight.ndim == 4
        assert scale.shape == (weight.shape[0],)
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.uint8 for z in zero_points)


def test_seven_bit_weights_where_asked_and_by_default_on_cpus_without_vnni(styled, tmp_path, monkeypatch):
    from famix.engine import amp

    dst = tmp_path / "reduced.int8.onnx"
    monkeypatch.setattr(amp, "cpu_capabilities", lambda: {"cpu_name": "AVX2 only", "avx2": True})
    quantize_onnx(styled, dst, images(4, seed=0))  # the default on such a CPU
    model = onnx.load(str(dst))
    meta = json.loads({p.key: p.value for p in model.metadata_props}["quantization"])
    assert meta["weights"] == "int8 per-channel, 7-bit range (-64..64)"
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dequantized = [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    weights = [
        inits[n] for n in dequantized if n in inits and inits[n].dtype == np.int8 and inits[n].ndim == 4
    ]
    assert weights and min(w.min() for w in weights) >= -64 and max(w.max() for w in weights) <= 64
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in weights) == 64  # used, not shrunk further
    agreement = [np.mean(logits(styled, x).argmax(1) == logits(dst, x).argmax(1)) for x in images(4, seed=1)]
    assert np.mean(agreement) >= MIN_AGREEMENT, agreement


def test_int8_agrees_with_fp32(styled, int8):
    dst, report = int8
    agreement, errors = [], []
    for x in images(4, seed=1):  # held out: not the calibration images
        ref, out = logits(styled, x), logits(dst, x)  # [1, 19, 64, 64] each
        agreement.append(np.mean(ref.argmax(1) == out.argmax(1)))
        errors.append(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    assert np.mean(agreement) >= MIN_AGREEMENT, agreement
    assert max(errors) <= MAX_RELATIVE_ERROR, errors
    assert report.size_bytes <= MAX_SIZE_RATIO * report.src_size_bytes


def test_quantize_prints_nothing(styled, tmp_path, capfd):
    quantize_onnx(styled, tmp_path / "a.onnx", images(2, seed=0), method="percentile")
    quantize_onnx(styled, tmp_path / "b.onnx", images(2, seed=0), restyle=lambda i, m: m, method="entropy")
    assert capfd.readouterr() == ("", "")


def ancestors(model: onnx.ModelProto, name: str) -> set[str]:
    """Every tensor ``name`` is computed from, and ``name`` itself."""
    producer = {out: n for n in model.graph.node for out in n.output}
    seen, stack = set(), [name]
    while stack:
        t = stack.pop()
        if t not in seen:
            seen.add(t)
            stack += [i for i in producer[t].input if i] if t in producer else []
    return seen


def test_styles_calibration_restyles_only_downstream(net, styled):
    calibration = images(3, seed=0)
    source = calibration_ranges(styled, calibration)
    assert calibration_ranges(styled, calibration, restyle=lambda i, m: m) == source

    calls = []

    def louder(i: int, style_map: np.ndarray) -> np.ndarray:
        calls.append((i, style_map.shape))
        return style_map * 100.0

    styles = calibration_ranges(styled, calibration, restyle=louder)
    assert calls == [(i, (1, net.style_channels, SIZE // 4, SIZE // 4)) for i in range(3)]  # layer1's map
    assert styles.keys() == source.keys()

    model = onnx.load(str(styled))
    upstream = ancestors(model, "style_map") & source.keys()  # images, conv1..., the style map itself
    downstream = source.keys() - upstream
    assert {"images", "style_map"} <= upstream and "logits" in downstream
    assert all(styles[t] == source[t] for t in upstream)
    # Ranges of what the network computes from the restyled map: some 100x wider (a few tensors of the
    # random network are 0 on every image, restyled or not).
    width = {t: source[t][1] - source[t][0] for t in downstream}
    live = [t for t in downstream if width[t] > 0]
    assert len(upstream) >= 10 and len(live) >= 10
    assert all(styles[t][1] - styles[t][0] > 10 * width[t] for t in live)
    assert all(styles[t] == source[t] == (0.0, 0.0) for t in downstream if width[t] == 0)


def test_styles_quantisation_uses_the_restyled_ranges(styled, int8, tmp_path):
    report = quantize_onnx(styled, tmp_path / "styles.onnx", images(4, seed=0), restyle=lambda i, m: m * 100)
    assert report.restyled
    source, styles = onnx.load(str(int8[0])), onnx.load(str(tmp_path / "styles.onnx"))
    meta = json.loads({p.key: p.value for p in styles.metadata_props}["quantization"])
    assert meta["calibrated_on"] == "styles"

    def scale(model: onnx.ModelProto, tensor: str) -> float:
        """The scale the int8 model dequantises ``tensor`` with."""
        node = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and tensor in n.output)
        return float(
            next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == node.input[1])
        )

    style = "style_map_DequantizeLinear_Output"
    assert scale(styles, style) == scale(source, style)
    assert scale(styles, "logits") > 10 * scale(source, "logits")


def test_dynamic_ids_graph_with_styles_calibration(net, tmp_path):
    # The export stage's ids graph: uint8 pixels [B, H, W, 3] in, uint8 ids out, dynamic batch and sizes (its
    # resizes read the input's shape downstream of the style map). Styles calibration on batches of 2,
    # then a run at another width.
    src = export(net, tmp_path / "ids.onnx", ids=True, dynamic=True)
    dst = tmp_path / "ids.int8.onnx"
    calibration = [pixels(torch.from_numpy(x)).numpy() for x in images(2, seed=0, batch=2)]
    report = quantize_onnx(src, dst, calibration, restyle=lambda i, m: m * (1.0 + 0.5 * i))
    assert report.restyled and report.nodes_quantized > 0
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["ids"]
    x = pixels(torch.from_numpy(images(1, seed=1, batch=2, width=96)[0])).numpy()  # [2, 64, 96, 3]
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(["ids"], {"images": x})[0]
    (out,) = session.run(None, {"images": x})
    assert out.dtype == np.uint8 and out.shape == (2, SIZE, 96)
    assert np.mean(out == ref) >= MIN_IDS_AGREEMENT


def test_methods(styled):
    calibration = images(2, seed=0)
    minmax = calibration_ranges(styled, calibration)
    percentile = calibration_ranges(styled, calibration, method="percentile")
    assert percentile.keys() == minmax.keys()
    # the 99.999th percentile of |x| on a histogram clips the highest values of some tensors
    assert all(percentile[t][1] <= minmax[t][1] + 1e-6 for t in minmax)
    assert any(percentile[t][1] < minmax[t][1] for t in minmax)
    with pytest.raises(ValueError, match="pass one of minmax, percentile, entropy"):
        calibration_ranges(styled, calibration, method="kl")


def one_line_error(call) -> str:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_inputs(styled, plain, tmp_path):
    dst = tmp_path / "out.onnx"
    message = one_line_error(lambda: quantize_onnx(styled, dst, []))
    assert "no calibration images" in message and str(styled) in message and "pass" in message

    message = one_line_error(lambda: quantize_onnx(plain, dst, images(1, seed=0), restyle=lambda i, m: m))
    assert str(plain) in message and "style_map" in message

    wrong = [images(1, seed=0)[0].astype(np.float64)]
    assert "float64" in one_line_error(lambda: quantize_onnx(styled, dst, wrong))
    assert "[1x3x64x64]" in one_line_error(lambda: quantize_onnx(styled, dst, images(1, seed=0, batch=2)))

    message = one_line_error(
        lambda: calibration_ranges(styled, images(1, seed=0), restyle=lambda i, m: m[:, :1])
    )
    assert "keep the shape" in message
    assert not dst.exists()


def test_missing_onnxruntime_says_how_to_install(styled, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "famix\[export\]"'):
        quantize_onnx(styled, tmp_path / "out.onnx", images(1, seed=0))
