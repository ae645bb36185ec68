"""Each CLIP weight's own input normalisation (models.clip.clip_normalization): read from open_clip's
pretrained table for a tag (no download), given as model.mean / model.std, OpenAI's otherwise; carried into
the run's config, the bank, the checkpoint, the segmenter and the export, and used by every stage."""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import safetensors.torch
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from famix.cli import main
from famix.config import ModelConfig, load_config
from famix.data.transforms import normalize
from famix.engine.checkpoint import load_checkpoint, load_segmenter
from famix.engine.exported import read_metadata
from famix.models.build import build_segmenter
from famix.models.clip import build_clip, clip_normalization
from famix.normalization import OPENAI_NORMALIZATION
from famix.style.bank import StyleBank
from tests.cli_errors import one_line

TINY_VIT = str(Path(__file__).resolve().parents[1] / "src" / "famix" / "configs" / "tiny_vit.yaml")
TAG = "laion2b_s32b_b82k"  # ViT-L-14's LAION weights: trained with Inception's 0.5 / 0.5
OPENAI = (tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD))


def table(name: str, tag: str) -> tuple[tuple, tuple]:
    cfg = open_clip.pretrained.get_pretrained_cfg(name, tag)
    return tuple(cfg["mean"]), tuple(cfg["std"])


def test_where_the_values_come_from(tmp_path):
    inception = table("ViT-L-14", TAG)
    assert inception == ((0.5,) * 3, (0.5,) * 3)  # the table's own entry, read offline
    got = clip_normalization("ViT-L-14", TAG)
    assert (got.mean, got.std) == inception
    eva = "merged2b_s4b_b131k"
    assert clip_normalization("EVA02-L-14", eva) == table("EVA02-L-14", eva)
    assert clip_normalization("RN50", "openai") == OPENAI
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")  # a bare file: famix cannot know its origin -> OpenAI's, the documented default
    assert clip_normalization("ViT-L-14", str(weights)) == OPENAI
    assert clip_normalization("tiny-vit", None) == OPENAI
    given = clip_normalization("ViT-L-14", TAG, [0.1, 0.2, 0.3], [0.4, 0.5, 0.6])  # explicit beats the tag
    assert given == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))


def test_openai_default_has_one_home_equal_to_open_clips():
    """famix.normalization writes OpenAI's mean / std (importing open_clip.constants would import torch):
    they are open_clip's, exactly, and every default reads them from there."""
    assert OPENAI_NORMALIZATION == OPENAI
    assert OPENAI_NORMALIZATION.mean == tuple(OPENAI_DATASET_MEAN)
    assert OPENAI_NORMALIZATION.std == tuple(OPENAI_DATASET_STD)
    assert inspect.signature(normalize).parameters["mean"].default is OPENAI_NORMALIZATION.mean
    assert inspect.signature(normalize).parameters["std"].default is OPENAI_NORMALIZATION.std
    code = "import sys, famix.normalization; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.fixture
def tag_weights(tmp_path, monkeypatch):
    """The tiny ViT answering to ViT-L-14's LAION tag: open_clip's table entry of that tag (its mean / std)
    listed for tiny-vit, and its download replaced by a local file of tiny-vit weights (no network)."""
    weights = tmp_path / "laion.safetensors"
    safetensors.torch.save_file(build_clip("tiny-vit", seed=3).state_dict(), weights)
    entry = open_clip.pretrained.get_pretrained_cfg("ViT-L-14", TAG)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny-vit", {TAG: entry})

    def download(cfg, *args, **kwargs):
        assert cfg is entry
        return str(weights)

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", download)
    return weights


def test_a_tag_with_inception_constants_goes_through_every_stage(tmp_path, tag_weights):
    inception = table("ViT-L-14", TAG)
    bank, run = tmp_path / "bank.safetensors", tmp_path / "run"
    common = ["-c", TINY_VIT, f"model.weights={TAG}", f"style.bank={bank}"]
    main(["mine", *common, "mine.max_images=4", "mine.steps=1"])
    stored = StyleBank.load(bank).metadata
    assert (tuple(stored["normalization"]["mean"]), tuple(stored["normalization"]["std"])) == inception
    assert stored["run"]["settings"]["model"]["mean"] == list(inception[0])  # in the bank's record
    main(["train", *common, f"train.out={run}", "train.iterations=2", "data.val=[]"])
    ckpt = load_checkpoint(run / "latest.pt")
    assert (tuple(ckpt["config"]["model"]["mean"]), tuple(ckpt["config"]["model"]["std"])) == inception
    assert ckpt["run"]["settings"]["model"]["std"] == list(inception[1])
    saved = load_config(run / "config.yaml")
    assert (tuple(saved.model.mean), tuple(saved.model.std)) == inception  # the resolved config
    model, _ = load_segmenter(run / "latest.pt")
    assert model.normalization == inception
    onnx = tmp_path / "m.onnx"
    main(["export", str(run / "latest.pt"), "--format", "onnx", "--size", "32x48", "--out", str(onnx)])
    meta = read_metadata(onnx, "onnx")
    assert (tuple(json.loads(meta["input_mean"])), tuple(json.loads(meta["input_std"]))) == inception
    # famix predict normalises with the model's constants: its output is the argmax the test computes
    rgb = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in inception)
    with torch.no_grad():
        expected = model((x - mean) / std).argmax(1)[0].numpy()
        other = model(
            (x - torch.tensor(OPENAI[0]).view(1, 3, 1, 1)) / torch.tensor(OPENAI[1]).view(1, 3, 1, 1)
        )
    assert not np.array_equal(other.argmax(1)[0].numpy(), expected)  # the constants matter here
    for source, out in ((run / "latest.pt", "pred"), (onnx, "pred_onnx")):
        main(["predict", str(source), str(tmp_path / "x.png"), "--out", str(tmp_path / out)])
        assert np.array_equal(np.array(Image.open(tmp_path / out / "x_trainid.png")), expected)


def test_a_bank_mined_under_other_constants_is_refused(tmp_path, tag_weights, capsys):
    bank = tmp_path / "bank.safetensors"
    main(["mine", "-c", TINY_VIT, f"style.bank={bank}", "mine.max_images=4", "mine.steps=1"])  # OpenAI's
    assert "normalization" not in StyleBank.load(bank).metadata  # as banks were before
    capsys.readouterr()
    args = [
        "train",
        "-c",
        TINY_VIT,
        f"model.weights={TAG}",
        f"style.bank={bank}",
        f"train.out={tmp_path / 'r'}",
    ]
    line = one_line(capsys, *args)
    assert (
        f"style bank {bank} was mined from images normalised with mean" in line and "[0.5, 0.5, 0.5]" in line
    )
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_storing_none_was_trained_with_openai_constants(tmp_path):
    """famix before it stored them (and official files) normalised with OpenAI's, whatever the tag."""
    cfg = ModelConfig(backbone="tiny-vit", output_stride=8, weights=TAG)
    stored = {k: v for k, v in vars(cfg).items() if k not in ("mean", "std")}  # as famix wrote it before
    state = build_segmenter(ModelConfig(backbone="tiny-vit", output_stride=8)).state_dict()
    ckpt = {"model_state": state, "config": {"model": stored}}
    assert load_segmenter(ckpt)[0].normalization == OPENAI


@pytest.mark.parametrize(
    "override,message",
    [
        (["model.mean=[0.5, 0.5, 0.5]"], "give both"),
        (["model.mean=[0.5, 0.5]", "model.std=[0.5, 0.5, 0.5]"], "model.mean=[0.5, 0.5]: give 3 numbers"),
        (["model.mean=[0.5, 0.5, 0.5]", "model.std=[0.5, 0, 0.5]"], "each > 0"),
    ],
)
def test_bad_constants_are_refused_before_any_work(tmp_path, capsys, override, message):
    bank = tmp_path / "bank.safetensors"
    line = one_line(capsys, "mine", "-c", TINY_VIT, f"style.bank={bank}", *override)
    assert message in line and not bank.exists()
