"""Precision on the CPU: ``run.amp`` / ``--amp`` resolved per device (auto: bf16 where native), one
precision per checkpoint, and bf16 autocast's predictions against fp32's on the demo's tiny models.

CPUs with and without native bf16 are simulated by replacing what torch reports of this CPU
(``famix.engine.amp.cpu_capabilities``); the bf16 computations themselves run on this machine's CPU (torch
emulates bf16 where the CPU has no bf16 units: slower, the same numbers)."""

import numpy as np
import pytest
import torch
from PIL import Image

from famix.cli import main
from famix.config import load_config
from famix.engine import amp
from famix.engine.checkpoint import checkpoint_precision, load_segmenter
from famix.engine.inference import model_input, predict_ids
from famix.models.clip import packaged_weights
from famix.settings import PLAIN
from famix.stages import train
from famix.world.synthetic import SyntheticDataset

CPU = torch.device("cpu")
AMX = {"cpu_name": "Intel Xeon", "amx_bf16": True, "avx512_bf16": True, "avx512_f": True, "avx2": True}
ZEN4 = {"cpu_name": "AMD EPYC", "avx512_bf16": True, "avx512_f": True, "avx2": True}
AVX2 = {"cpu_name": "AMD EPYC 7B12", "avx2": True}


@pytest.fixture
def cpu_is(monkeypatch):
    def simulate(caps: dict) -> None:
        monkeypatch.setattr(amp, "cpu_capabilities", lambda: dict(caps))

    return simulate


@pytest.mark.parametrize("caps", [AMX, ZEN4])
def test_auto_and_bf16_are_bf16_on_a_cpu_with_native_bf16(cpu_is, caps):
    cpu_is(caps)
    assert amp.native_bf16(CPU)
    assert amp.precision("auto", CPU) == ("bf16", torch.bfloat16)
    assert amp.precision("bf16", CPU) == ("bf16", torch.bfloat16)
    assert amp.precision("off", CPU) == ("off", None)
    with pytest.raises(ValueError, match="run.amp=fp16 \\(--amp fp16\\): fp16 autocast is for CUDA"):
        amp.precision("fp16", CPU)


def test_auto_is_fp32_and_bf16_is_refused_on_a_cpu_without_it(cpu_is):
    cpu_is(AVX2)
    assert not amp.native_bf16(CPU)
    assert amp.precision("auto", CPU) == ("off", None)
    with pytest.raises(ValueError) as error:
        amp.precision("bf16", CPU)
    assert str(error.value) == (
        "run.amp=bf16 (--amp bf16): this CPU, AMD EPYC 7B12 (avx2), has no native bf16 (AMX or avx512_bf16); "
        "pass auto or off"
    )
    # a model trained in bf16 (on a GPU, say) is evaluated in fp32 here; asked for bf16, refused
    assert amp.trained_precision(None, "bf16", CPU) == ("off", None)
    with pytest.raises(ValueError, match="has no native bf16"):
        amp.trained_precision("bf16", "off", CPU)


def test_one_precision_per_checkpoint_the_recorded_one_first(cpu_is):
    cpu_is(ZEN4)
    # trained on a CPU before CPUs had autocast: the config said bf16, the record what was computed (off)
    old_cpu_run = {"config": {"run": {"amp": "bf16"}}, "run": {"settings": {"run": {"amp": "off"}}}}
    assert checkpoint_precision(None, old_cpu_run, CPU) == ("off", None)
    gpu_run = {"config": {"run": {"amp": "auto"}}, "run": {"settings": {"run": {"amp": "bf16"}}}}
    assert checkpoint_precision(None, gpu_run, CPU) == ("bf16", torch.bfloat16)
    assert checkpoint_precision("off", gpu_run, CPU) == ("off", None)  # --amp wins
    assert checkpoint_precision(None, {}, CPU) == ("bf16", torch.bfloat16)  # official files: bf16
    cpu_is(AVX2)
    assert checkpoint_precision(None, gpu_run, CPU) == ("off", None)


def test_the_train_record_holds_the_resolved_precision(cpu_is):
    from famix.stages.train import train_record

    cfg = load_config("tiny", ["run.amp=auto"])
    cpu_is(ZEN4)
    assert train_record(cfg).settings["run"]["amp"] == "bf16"
    cpu_is(AVX2)
    assert train_record(cfg).settings["run"]["amp"] == "off"
    # what a run says at its start
    line = amp.describe("auto", "off", CPU)
    assert line == "precision: fp32 (run.amp=auto) on CPU AMD EPYC 7B12 (avx2)"


def test_bf16_on_a_cpu_without_it_is_one_clear_line(checkpoint, cpu_is, capsys, tmp_path):
    cpu_is(AVX2)
    image = tmp_path / "x.png"
    Image.new("RGB", (48, 32)).save(image)
    for command in (
        ["eval", str(checkpoint), "--data", "synthetic:day:2:size=32", "--amp", "bf16", "--workers", "0"],
        ["predict", str(checkpoint), str(image), "--out", str(tmp_path / "p"), "--amp", "fp16"],
    ):
        with pytest.raises(SystemExit) as exit_:
            main(command)
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
        assert "pass auto or off" in err
    assert not (tmp_path / "p").exists()


@pytest.fixture(scope="module", params=[("tiny-clip", 16), ("tiny-vit-clip", 8)], ids=["rn", "vit"])
def briefly_trained(request, tmp_path_factory):
    """The demo's tiny towers (shipped CLIP weights), their heads trained 40 steps on day scenes (fp32): a
    model with decided classes (a random head's near-ties are not what users run)."""
    backbone, stride = request.param
    out = tmp_path_factory.mktemp(backbone)
    cfg = load_config(
        "tiny",
        [
            f"model.backbone={backbone}",
            f"model.weights={packaged_weights(backbone)}",
            f"model.output_stride={stride}",
            "style.mix=none",
            "data.train=synthetic:day:200:size=96",
            "data.val=[]",
            "train.iterations=40",
            "train.val_interval=40",
            f"train.out={out}",
        ],
    )
    train.run(cfg, say=lambda _: None)
    return out / "best.pt"


def test_bf16_autocast_predicts_as_fp32_on_99_percent_of_pixels(briefly_trained):
    model, _ = load_segmenter(briefly_trained)
    scenes = SyntheticDataset("day", 8, size=(96, 96), seed=3)  # scenes not trained on
    images = torch.stack([scenes[i][0] for i in range(len(scenes))])  # uint8 [8, 3, 96, 96]
    with torch.inference_mode():
        fp32 = predict_ids(model, images, tta=PLAIN)  # uint8 [8, 96, 96]
        bf16 = predict_ids(model, images, tta=PLAIN, amp_dtype=torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 is what autocast computed in
            assert model.classifier(*model.features(model_input(model, images[:1])).values()).dtype == (
                torch.bfloat16
            )
    agreement = (fp32 == bf16).mean()
    shares = np.bincount(fp32.ravel(), minlength=256) / fp32.size
    assert (shares >= 0.05).sum() >= 3  # several classes: agreement is not that of a constant map
    assert agreement >= 0.99, agreement
