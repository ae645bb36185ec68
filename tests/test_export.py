"""famix export: ONNX (through ONNX Runtime), torch.export and TorchScript round trips against the eager
model, the refusal past tolerance, and famix predict on an exported .onnx file, at any image size."""

from __future__ import annotations

import builtins
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from famix.cli import main
from famix.config import ModelConfig
from famix.data.transforms import normalize
from famix.engine.checkpoint import load_segmenter
from famix.engine.exported import METADATA_FILE, OnnxSegmenter, load_exported, read_metadata
from famix.models.build import build_segmenter
from famix.normalization import OPENAI_NORMALIZATION
from famix.settings import ATOL, ExportSettings, parse_size
from famix.stages import export
from famix.stages.export import check_size, compare, export_model

# float32 reorderings only: the tiny model's measured max abs logit difference is ~4e-8 (ONNX Runtime)
# and 0 (torch.export, TorchScript); every argmax agrees.
CLOSE = 1e-5


def _onnx_tools():
    for name in ("onnxruntime", "onnx", "onnxscript"):
        pytest.importorskip(name)


@pytest.fixture(scope="module")
def eager(checkpoint):
    return load_segmenter(checkpoint)


@pytest.fixture(scope="module")
def onnx_dynamic(checkpoint):
    """`famix export CKPT --format onnx --size 32x48 --dynamic`: the file and what the command printed."""
    _onnx_tools()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["export", str(checkpoint), "--format", "onnx", "--size", "32x48", "--dynamic"])
    return checkpoint.with_name("best.onnx"), printed.getvalue()


def _no_temp_files(folder):
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


def _assert_close(check, n_inputs=2):
    assert check.max_abs_diff <= CLOSE and check.agreement == 100.0
    assert len(check.shapes) == n_inputs


def test_sizes_and_their_errors():
    assert parse_size("512x1024") == (512, 1024) and parse_size("64") == (64, 64)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_size("512 by 1024")
    check_size((32, 48), 16, dynamic=True)
    check_size((16, 16), 16, dynamic=False)
    with pytest.raises(ValueError, match="multiples of the model's output stride 16; pass --size 32x48"):
        check_size((30, 50), 16, dynamic=False)
    with pytest.raises(ValueError, match="at least 32 with --dynamic; pass --size 32x48"):
        check_size((16, 48), 16, dynamic=True)


def test_onnx_dynamic_export_via_cli(onnx_dynamic, eager, checkpoint):
    path, printed = onnx_dynamic
    assert path.is_file() and _no_temp_files(path.parent)
    # The third input's sides are no multiples of the stride: a ResNet's dynamic export takes any size.
    assert "argmax agreement 100.000 %" in printed and "2x3x32x48, 1x3x48x80, 1x3x33x51" in printed
    assert f"wrote {path}" in printed
    model, cfg = eager
    onnx_model = OnnxSegmenter(path)
    meta = onnx_model.metadata
    assert json.loads(meta["class_names"]) == list(cfg.class_names) and meta["dynamic"] == "true"
    assert json.loads(meta["input_mean"]) == list(OPENAI_NORMALIZATION.mean)
    assert json.loads(meta["input_std"]) == list(OPENAI_NORMALIZATION.std)
    assert (
        meta["famix_version"]
        and "[batch, 3, height, width]" in meta["input"]
        and meta["size_multiple"] == "1"
    )
    # the dynamic dimensions carry the names users read, in the input and the output
    dims = [[d.name for d in x] for x in (onnx_model.session.get_inputs(), onnx_model.session.get_outputs())]
    shapes = [x[0].shape for x in (onnx_model.session.get_inputs(), onnx_model.session.get_outputs())]
    assert dims == [["images"], ["logits"]]
    assert shapes == [["batch", 3, "height", "width"], ["batch", len(cfg.class_names), "height", "width"]]
    assert meta["min_size"] == "32" and meta["pad_to_multiple"] == "1" and meta["output_stride"] == "16"
    # Sizes and batches other than those checked at export time, square and not, multiples and not.
    g = torch.Generator().manual_seed(1)
    shapes = [(3, 3, 64, 32), (1, 3, 32, 32), (2, 3, 40, 56), (1, 3, 1080 // 8, 1920 // 8 - 3)]
    inputs = [normalize(torch.rand(s, generator=g)) for s in shapes]
    _assert_close(compare(model, onnx_model, inputs), 4)
    with pytest.raises(ValueError, match="takes heights and widths of at least 32, got 30x48"):
        onnx_model(torch.zeros(1, 3, 30, 48))


def test_onnx_fixed_size(eager, tmp_path):
    _onnx_tools()
    model, cfg = eager
    out = tmp_path / "fixed.onnx"
    check = export_model(model, cfg, out, ExportSettings("onnx", (32, 48)))
    _assert_close(check)
    assert check.shapes == [(1, 3, 32, 48)] * 2 and _no_temp_files(tmp_path)
    onnx_model = load_exported(out, "onnx")
    assert onnx_model.shape == [1, 3, 32, 48] and onnx_model.metadata["size"] == "32x48"
    x = normalize(torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(2)))
    _assert_close(compare(model, onnx_model, [x]), 1)  # a fixed batch of 1, run image by image
    with pytest.raises(ValueError, match="takes 32x48 images only, got 48x48"):
        onnx_model(torch.zeros(1, 3, 48, 48))


@pytest.mark.parametrize("dynamic", [False, True])
def test_exported_program_round_trip(eager, tmp_path, dynamic):
    model, cfg = eager
    out = tmp_path / "model.pt2"
    check = export_model(model, cfg, out, ExportSettings("exported-program", (32, 48), dynamic=dynamic))
    _assert_close(check, 3 if dynamic else 2)  # dynamic: a size that is no multiple of the stride too
    assert len(set(check.shapes)) == (3 if dynamic else 1)
    extra = {METADATA_FILE: ""}
    program = torch.export.load(out, extra_files=extra).module()
    assert json.loads(extra[METADATA_FILE])["dynamic"] == json.dumps(dynamic)
    x = normalize(torch.rand(1, 3, 64, 32, generator=torch.Generator().manual_seed(3)))
    if dynamic:
        _assert_close(compare(model, program, [x]), 1)
    else:
        with pytest.raises(Exception, match="(?i)guard|shape|size"):  # a fixed program checks its input
            program(x)


def test_torchscript_round_trip(eager, tmp_path):
    model, cfg = eager
    out = tmp_path / "model.torchscript.pt"
    check = export_model(model, cfg, out, ExportSettings("torchscript", (32, 48), dynamic=True))
    _assert_close(check, 3)
    extra = {METADATA_FILE: ""}
    torch.jit.load(out, _extra_files=extra)
    meta = json.loads(extra[METADATA_FILE])
    assert meta["format"] == "torchscript" and json.loads(meta["class_names"]) == list(cfg.class_names)


def _perturbed(monkeypatch, change):
    """Make the export check see ``change(logits)`` instead of the exported file's logits."""
    real = export.load_exported

    def load(*args, **kwargs):
        loaded = real(*args, **kwargs)
        return lambda x: change(loaded(x))

    monkeypatch.setattr(export, "load_exported", load)


@pytest.mark.parametrize(
    ("change", "atol", "message"),
    [
        (lambda y: y + 2 * ATOL, ATOL, "max abs logit difference 0.002, argmax agreement 100.000 %"),
        (lambda y: -y, 1e9, "argmax agreement [0-9.]+ %"),  # within a (huge) atol, other argmax
        (lambda y: y + torch.where(y > y.mean(), float("nan"), 0.0), 1e9, "difference nan"),
    ],
    ids=["max-abs-diff", "argmax", "nan"],
)
def test_refusal_past_tolerance_writes_nothing(eager, tmp_path, monkeypatch, change, atol, message):
    model, cfg = eager
    _perturbed(monkeypatch, change)
    with pytest.raises(
        ValueError, match=f"does not match the checkpoint's model: .*{message}.*nothing written"
    ):
        export_model(
            model, cfg, tmp_path / "model.pt2", ExportSettings("exported-program", (32, 32), atol=atol)
        )
    assert list(tmp_path.iterdir()) == []


def test_cli_refusal_is_one_line_and_keeps_the_old_file(checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "old.pt2"
    argv = ["export", str(checkpoint), "--format", "exported-program", "--size", "32x32", "--out", str(out)]
    main(argv)  # an earlier export, which a new one may replace
    earlier = out.read_bytes()
    _perturbed(monkeypatch, lambda y: y + 1)
    with pytest.raises(SystemExit) as exit_:
        main([*argv[:5], "32x48", *argv[6:]])  # another export into the same file (the same one: a no-op)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("famix export: error: the exported-program export does not match") and "\n" not in err
    )
    assert "--atol 0.001 and --min-agreement 99.9 %; nothing written" in err
    assert out.read_bytes() == earlier and _no_temp_files(tmp_path)


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bar


def test_cli_export_errors(checkpoint, tmp_path, capsys, monkeypatch):
    err = _fails(["export", str(checkpoint), "--format", "exported-program", "--size", "30x48"], capsys)
    assert err == (
        "famix export: error: --size 30x48: height and width must be multiples of the model's output "
        "stride 16; pass --size 32x48"
    )
    err = _fails(
        ["export", str(checkpoint), "--format", "torchscript", "--size", "32", "--out", str(checkpoint)],
        capsys,
    )
    assert "is the checkpoint itself" in err
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    err = _fails(["export", str(checkpoint), "--format", "onnx", "--size", "32x48"], capsys)
    assert 'pip install "famix[export]"' in err
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    err = _fails(["predict", str(tmp_path / "model.onnx"), str(image), "--out", str(tmp_path / "o")], capsys)
    assert err.startswith("famix predict: error: .onnx files need onnxruntime") and "famix[export]" in err


def _images(folder, sizes):
    """Smooth random-ish RGB images (upsampled noise: regions, not salt and pepper)."""
    paths = []
    for i, (h, w) in enumerate(sizes):
        noise = np.random.default_rng(i).integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        paths.append(folder / f"img{i}.png")
        Image.fromarray(noise).resize((w, h), Image.BILINEAR).save(paths[-1])
    return paths


def _trainids(folder, paths):
    return [np.asarray(Image.open(folder / f"{p.stem}_trainid.png")) for p in paths]


def test_predict_onnx_gives_the_checkpoints_label_maps(onnx_dynamic, checkpoint, tmp_path, capsys):
    onnx_path, _ = onnx_dynamic
    paths = _images(tmp_path, [(32, 48), (48, 64), (64, 32), (32, 48)])
    images = [str(p) for p in paths]
    main(["predict", str(onnx_path), *images, "--out", str(tmp_path / "onnx"), "--batch-size", "2"])
    main(["predict", str(checkpoint), *images, "--out", str(tmp_path / "ckpt"), "--batch-size", "2"])
    assert "12 prediction files in" in capsys.readouterr().out
    for a, b in zip(_trainids(tmp_path / "onnx", paths), _trainids(tmp_path / "ckpt", paths), strict=True):
        np.testing.assert_array_equal(a, b)  # logits differ by ~4e-8: no pixel is that close to a tie
    # Test-time options go through the same predict_logits; half of 64x64 is 32x32, which the file takes.
    (tmp_path / "big").mkdir()
    big = _images(tmp_path / "big", [(64, 64)])
    tta = ["--scale", "0.5", "--ensemble"]
    main(["predict", str(onnx_path), str(big[0]), "--out", str(tmp_path / "onnx_tta"), *tta])
    main(["predict", str(checkpoint), str(big[0]), "--out", str(tmp_path / "ckpt_tta"), *tta])
    (a,), (b,) = _trainids(tmp_path / "onnx_tta", big), _trainids(tmp_path / "ckpt_tta", big)
    assert (a == b).mean() >= 0.999


def test_predict_onnx_at_sizes_that_are_no_multiples_of_the_stride(onnx_dynamic, checkpoint, tmp_path):
    # 1920x1080 photos in miniature: 1080 is no multiple of the output stride 16, nor are these sides.
    onnx_path, _ = onnx_dynamic
    paths = _images(tmp_path, [(40, 56), (37, 50), (1080 // 8, 1920 // 8)])
    images = [str(p) for p in paths]
    main(["predict", str(onnx_path), *images, "--out", str(tmp_path / "onnx")])
    main(["predict", str(checkpoint), *images, "--out", str(tmp_path / "ckpt")])
    for a, b in zip(_trainids(tmp_path / "onnx", paths), _trainids(tmp_path / "ckpt", paths), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [a.shape for a in _trainids(tmp_path / "onnx", paths)] == [(40, 56), (37, 50), (135, 240)]


def test_an_onnx_file_of_stride_multiples_says_to_re_export(onnx_dynamic, tmp_path):
    # What files exported before any-size exports say of other sizes (their graph takes multiples only).
    import onnx

    onnx_path, _ = onnx_dynamic
    model = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in model.metadata_props if p.key != "pad_to_multiple"}
    meta["size_multiple"] = "16"
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    assert read_metadata(old, "onnx") == meta and read_metadata(onnx_path, "torchscript") is None
    with pytest.raises(ValueError, match="multiples of 16 only, got 40x56: re-export it with this famix"):
        OnnxSegmenter(old)(torch.zeros(1, 3, 40, 56))


@pytest.fixture(scope="module")
def vit():
    cfg = ModelConfig(backbone="tiny-vit", output_stride=8)  # patch size 8
    return build_segmenter(cfg, seed=0).eval(), cfg


def test_onnx_vit_pads_other_sizes_as_the_eager_model(vit, tmp_path):
    # A ViT's forward zero-pads to multiples of its patch size and crops the logits back; torch.export cannot
    # trace that branch, so the file takes multiples and OnnxSegmenter pads as the eager model would.
    _onnx_tools()
    model, cfg = vit
    check = export_model(model, cfg, tmp_path / "vit.onnx", ExportSettings("onnx", (16, 24), dynamic=True))
    _assert_close(check)  # no third, non-multiple input: the graph itself takes multiples only
    onnx_model = OnnxSegmenter(tmp_path / "vit.onnx")
    meta = onnx_model.metadata
    assert (meta["size_multiple"], meta["pad_to_multiple"], meta["min_size"]) == ("8", "8", "16")
    assert "zero-pad other sizes at the bottom and right to multiples of 8" in meta["input"]
    g = torch.Generator().manual_seed(4)
    inputs = [normalize(torch.rand(s, generator=g)) for s in [(1, 3, 37, 50), (2, 3, 17, 23), (1, 3, 16, 16)]]
    _assert_close(compare(model, onnx_model, inputs), 3)
    export_model(model, cfg, tmp_path / "fixed.onnx", ExportSettings("onnx", (40, 56)))
    fixed = OnnxSegmenter(tmp_path / "fixed.onnx")
    _assert_close(compare(model, fixed, inputs[:1]), 1)  # 37x50 pads to the file's 40x56
    with pytest.raises(ValueError, match="takes 40x56 images only, got 30x50"):
        fixed(torch.zeros(1, 3, 30, 50))


def test_predict_onnx_errors(onnx_dynamic, tmp_path, capsys):
    onnx_path, _ = onnx_dynamic
    image = tmp_path / "small.png"
    Image.new("RGB", (50, 30)).save(image)
    err = _fails(["predict", str(onnx_path), str(image), "--out", str(tmp_path / "o")], capsys)
    assert err == (
        "famix predict: error: best.onnx takes heights and widths of at least 32, got 30x50: resize the "
        "images, choose --scale/--window so the sizes fit, or predict with the checkpoint"
    )
    pt2 = tmp_path / "best.pt2"
    pt2.write_bytes(b"PK")
    err = _fails(["predict", str(pt2), str(image), "--out", str(tmp_path / "o")], capsys)
    assert "famix predict takes a checkpoint or an .onnx file" in err
