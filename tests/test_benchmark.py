"""`famix benchmark` on the tiny checkpoint: the real CLI writes its table, JSON and picture; its fp32 eager
mIoU is `famix eval`'s on the same images, the fp32 exports compute the same classes; bad inputs are one line
before any work. No wall-clock assertions: timings vary."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from PIL import Image

import famix
from famix.cli import main
from famix.engine import amp
from famix.stages import benchmark
from tests.cli_errors import one_line

DAY = "synthetic:day:2:0:size=64"
NIGHT = "synthetic:night:3:1:size=64"  # 3 scenes, --images 2: scenes 0 and 1 (spread evenly over 3)
NIGHT_FIRST_TWO = "synthetic:night:2:1:size=64"  # the same two scenes as a spec of their own
QUICK = ["--size", "64x64", "--repeats", "2", "--warmup", "1", "--images", "2"]


CALIBRATION = ["--calibration-data", "synthetic:day:12:7:size=64", "--calibration-images", "8"]


@pytest.fixture(scope="module")
def measured(checkpoint, tmp_path_factory):
    """One `famix benchmark` run: eager, TorchScript (fp32 and bf16 where native), ONNX and ONNX int8, two
    datasets given comma-separated; returns (its folder, its JSON)."""
    out = tmp_path_factory.mktemp("bench") / "tiny.benchmark"
    main(["benchmark", str(checkpoint), "--data", f"{DAY},{NIGHT}", "--formats", "eager", "torchscript",
          "onnx", "onnx-int8", "--out", str(out), *QUICK, *CALIBRATION])  # fmt: skip
    return out, json.loads((out / "benchmark.json").read_text())


def _rows(report: dict) -> dict[str, dict]:
    return {v["name"]: v for v in report["variants"]}


def test_writes_table_json_and_picture(measured):
    out, report = measured
    assert report["kind"] == benchmark.KIND and report["settings"]["size"] == [64, 64]
    assert report["datasets"] == {DAY: {"images": 2, "of": 2}, NIGHT: {"images": 2, "of": 3}}
    rows = _rows(report)
    native = amp.native_bf16(torch.device("cpu"))
    expected = [
        "eager fp32",
        "eager bf16",
        "torchscript fp32",
        "torchscript bf16",
        "onnx fp32",
        "onnx-int8 int8",
    ]
    assert list(rows) == expected
    assert rows["onnx-int8 int8"]["reason"] is None and rows["onnx-int8 int8"]["peak_of"] == "int8"
    assert rows["onnx-int8 int8"]["size_mb"] < rows["onnx fp32"]["size_mb"] / 2  # int8 weights
    measured_rows = [v for v in report["variants"] if v["reason"] is None]
    for v in measured_rows:
        assert len(v["seconds"]) == 2 and v["images_per_s"] > 0 and v["gflops"] > 0 and v["size_mb"] > 0
        assert v["peak_share"] > 0 and v["peak_mb"] is not None and set(v["miou"]) == {DAY, NIGHT}
    for name in ("eager bf16", "torchscript bf16"):  # bf16 where the CPU has it, else skipped with the reason
        assert (rows[name]["reason"] is None) == native
        assert native or "no native bf16" in rows[name]["reason"]
    assert report["flops_per_batch"] > 0 and report["peak_gflops"]["fp32"] > 0
    # one point per measured variant, labelled; the picture opens
    assert [p["label"] for p in report["plot"]] == [v["name"] for v in measured_rows]
    with Image.open(out / "benchmark.png") as picture:
        assert picture.format == "PNG" and picture.size[0] >= 400 and picture.size[1] >= 300
    table = (out / "benchmark.md").read_text()
    assert table.startswith(f"# {benchmark.KIND}") and amp.cpu_description() in table
    assert f"torch {torch.__version__}" in table and "| onnx | fp32 |" in table and f"mIoU {NIGHT}" in table


def test_fp32_eager_is_the_baseline_and_famix_evals_miou(measured, checkpoint, tmp_path):
    _, report = measured
    rows = _rows(report)
    eager = rows["eager fp32"]
    assert eager["speedup"] == 1.0 and eager["miou_delta"] == {DAY: 0.0, NIGHT: 0.0}
    main(["eval", str(checkpoint), "--data", DAY, NIGHT_FIRST_TWO, "--amp", "off", "--workers", "0",
          "--json", str(tmp_path / "eval.json")])  # fmt: skip
    evaluated = json.loads((tmp_path / "eval.json").read_text())["datasets"]
    assert eager["miou"][DAY] == pytest.approx(evaluated[DAY]["miou"], abs=1e-9)
    assert eager["miou"][NIGHT] == pytest.approx(evaluated[NIGHT_FIRST_TWO]["miou"], abs=1e-9)
    for name in ("torchscript fp32", "onnx fp32"):  # fp32 exports compute the same classes
        for spec in (DAY, NIGHT):
            assert rows[name]["miou"][spec] == pytest.approx(eager["miou"][spec], abs=0.01)
            assert rows[name]["miou_delta"][spec] == pytest.approx(0.0, abs=0.01)


def test_python_api_without_native_bf16_and_a_failing_compile(checkpoint, tmp_path, monkeypatch):
    """famix.benchmark returns the JSON it writes; bf16 on a CPU without it is skipped with the reason (by
    default), and a torch.compile that fails is a skipped row, not a failed benchmark."""
    monkeypatch.setattr(amp, "cpu_capabilities", lambda: {"cpu_name": "Test CPU", "avx2": True})

    def broken_compile(model, **_):
        def run(x):
            raise RuntimeError("no C++ compiler\nsecond line")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    out = tmp_path / "api"
    report = famix.benchmark(
        checkpoint, DAY, out=out, formats=["eager", "compiled"], size="64x64", repeats=1, warmup=0,
        progress=False,
    )  # fmt: skip
    assert report == json.loads((out / "benchmark.json").read_text())
    rows = _rows(report)
    assert list(rows) == ["eager fp32", "eager bf16", "compiled fp32", "compiled bf16"]
    assert rows["eager fp32"]["reason"] is None and rows["eager fp32"]["speedup"] == 1.0
    assert "Test CPU" in rows["eager bf16"]["reason"] and "no native bf16" in rows["eager bf16"]["reason"]
    assert rows["compiled fp32"]["reason"] == "torch.compile failed: RuntimeError: no C++ compiler"
    assert len(report["plot"]) == 1 and "Test CPU" in (out / "benchmark.md").read_text()
    # its own folder is replaced on a second run
    famix.benchmark(checkpoint, [DAY], out=out, formats=["eager"], precisions=["fp32"], size=64, repeats=1)
    # without matplotlib: the table and the JSON, and how to get the picture
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    said = []
    written = benchmark.write_files(report, tmp_path / "no-picture", said.append)
    assert [p.name for p in written] == ["benchmark.json", "benchmark.md"]
    assert said[0] == 'benchmark.png not drawn: it needs matplotlib (pip install "famix[benchmark]")'


def test_bad_inputs_are_one_line_before_any_work(checkpoint, tmp_path, capsys, monkeypatch):
    fast = ["--size", "64x64", "--repeats", "1", "--warmup", "0"]  # were a refusal missed: a short run
    run = ["benchmark", checkpoint, "--data", DAY, *fast]
    out = tmp_path / "new.benchmark"
    line = one_line(capsys, *run, "--formats", "eager", "tflite", "--out", out)
    assert "--formats tflite: choose from eager, compiled, torchscript, onnx, onnx-int8" in line
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    assert "is a file, not a folder" in one_line(capsys, *run, "--out", notes)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "benchmark.md").write_text("# my own notes\n")
    assert "did not write" in one_line(capsys, *run, "--out", theirs)
    assert "not found" in one_line(capsys, "benchmark", tmp_path / "nowhere.pt", "--data", DAY, *fast)
    line = one_line(capsys, "benchmark", checkpoint, "--data", "synthetic:moon:2", *fast, "--out", out)
    assert line.startswith("famix benchmark: error: --data synthetic:moon:2: unknown synthetic domain")
    line = one_line(capsys, *run, "--formats", "onnx", "--size", "50x50", "--out", out)
    assert "--size 50x50" in line and "multiples of the model's output stride 16" in line
    monkeypatch.setattr(amp, "cpu_capabilities", lambda: {"cpu_name": "Test CPU", "avx2": True})
    line = one_line(capsys, *run, "--precisions", "bf16", "--out", out)
    assert "--precisions bf16" in line and "Test CPU" in line and "no native bf16" in line
    line = one_line(capsys, *run, "--calibration-data", "synthetic:moon:2", "--out", out)
    assert line.startswith("famix benchmark: error: --calibration-data synthetic:moon:2: unknown synthetic")
    line = one_line(capsys, *run, "--precisions", "fp32", "fp16", "--out", out)
    assert "--precisions fp16: fp16 autocast is for CUDA, not Test CPU (avx2): pass fp32 or bf16" in line
    assert not out.exists() and notes.read_text() == "mine\n"
    assert (theirs / "benchmark.md").read_text() == "# my own notes\n"


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="the resident set is read from /proc")
def test_resident_peak_sees_what_a_block_allocates_and_frees():
    with benchmark.ResidentPeak() as memory:
        x = torch.ones(25_000_000)  # 100 MB, written, freed before the block ends
        del x
    assert memory.method in ("VmHWM", "sampled") and memory.peak >= 90e6
    assert benchmark.even_indices(3, 2) == [0, 1] and benchmark.even_indices(10, 3) == [0, 3, 6]
    assert benchmark.even_indices(2, None) == benchmark.even_indices(2, 5) == [0, 1]
