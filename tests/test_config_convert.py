"""Config loading/overrides and the converters for official files."""

import pickle

import pytest
import torch

from famix.config import Config, load_config, save_config
from famix.engine.checkpoint import load_checkpoint, save_checkpoint
from famix.engine.convert import convert_bank, convert_checkpoint, convert_clip
from famix.models.clip import build_clip, load_clip_state_dict
from famix.style.bank import StyleBank


def test_overrides_are_typed_and_unknown_keys_listed(tmp_path):
    cfg = load_config(None, ["train.lr=1e-3", "data.val=[a, b]", "model.weights=null", "train.iterations=7"])
    assert cfg.train.lr == 0.001 and cfg.data.val == ["a", "b"] and cfg.model.weights is None
    assert cfg.train.iterations == 7
    with pytest.raises(ValueError, match="train.itrations.*iterations"):
        load_config(None, ["train.itrations=5"])
    with pytest.raises(ValueError, match="train.iterations: expected int"):
        load_config(None, ["train.iterations=many"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert load_config(None) == Config()


def test_convert_official_pickle_bank_needs_opt_in(tmp_path):
    raw = {
        "road_mu": [torch.full((64, 1, 1), 1.0), torch.full((64, 1, 1), 2.0)],
        "road_std": [torch.ones(64, 1, 1), torch.ones(64, 1, 1)],
        "255_mu": [torch.zeros(64, 1, 1)],
        "255_std": [torch.ones(64, 1, 1)],
    }
    src = tmp_path / "bank.pkl"
    src.write_bytes(pickle.dumps(raw))
    with pytest.raises(ValueError, match="--trust-pickle"):
        convert_bank(str(src), str(tmp_path / "b.safetensors"))
    convert_bank(str(src), str(tmp_path / "b.safetensors"), trust_pickle=True)
    bank = StyleBank.load(tmp_path / "b.safetensors")
    assert bank.channels == 64 and bank.counts()["road"] == 2 and bank.counts()["ignore"] == 1
    assert bank.styles["road"][0][1].eq(2.0).all()


def test_convert_clip_to_safetensors(tmp_path):
    model = build_clip("tiny-rn", seed=3)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    convert_clip(str(tmp_path / "w.pt"), str(tmp_path / "w.safetensors"))
    loaded = load_clip_state_dict(tmp_path / "w.safetensors")
    for k, v in model.state_dict().items():
        if k in loaded:
            assert torch.equal(v, loaded[k]), k


def test_convert_official_checkpoint(tmp_path):
    from famix.config import ModelConfig
    from famix.models.build import build_segmenter

    model = build_segmenter(ModelConfig(backbone="RN50"), seed=5)
    official = tmp_path / "official.pth"
    torch.save(
        {
            "model_state": model.state_dict(),
            "optimizer_state": {},
            "scheduler_state": {},
            "cur_itrs": 40000,
            "best_score": 0.5,
        },
        official,
    )
    convert_checkpoint(str(official), str(tmp_path / "famix.pt"))
    ckpt = load_checkpoint(tmp_path / "famix.pt")
    assert ckpt["config"]["model"]["backbone"] == "RN50"
    assert all(torch.equal(v, ckpt["model_state"][k]) for k, v in model.state_dict().items())


class Evil:  # an arbitrary class: unpickling it would run import machinery a checkpoint should not need
    pass


def test_unsafe_checkpoint_is_refused(tmp_path):
    save_checkpoint(tmp_path / "ok.pt", model_state={"w": torch.ones(1)})
    torch.save({"model_state": {}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="safely"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_yaml_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 0.1\n  iterations: [1, 2\nmodel:\n  backbone: RN50\n")
    with pytest.raises(ValueError, match=r"bad\.yaml line \d+, column \d+: not valid YAML"):
        load_config(bad)
    as_string = tmp_path / "string.yaml"
    as_string.write_text("model: RN50\n")  # a section given as a string, not read letter by letter
    with pytest.raises(ValueError, match=r"section 'model': expected a mapping.*got str 'RN50'"):
        load_config(as_string)
    with pytest.raises(ValueError, match="override 'train.lr=\\[1': the value is not valid YAML"):
        load_config(None, ["train.lr=[1"])
    with pytest.raises(ValueError, match="section 'run': expected a mapping"):
        load_config(None, ["run=cpu"])


def test_reading_a_config_imports_no_model_library(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from famix.config import load_config; load_config('tiny', ['train.lr=0.2']); "
        "print(sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_changed_settings_lists_result_changing_keys_only():
    from famix.config import changed_settings

    a = load_config("tiny").to_dict()
    b = load_config(
        "tiny", ["train.lr=0.01", "style.mix=none", "train.log_interval=1", "run.device=cuda"]
    ).to_dict()
    changed = changed_settings(a, b)
    assert changed == ["style.mix: 'famix' -> 'none'", "train.lr: 0.05 -> 0.01"]
    assert changed_settings(a, b, ("model", "run")) == []
