"""Config loading/overrides and the converters for official files."""

import pickle

import pytest
import safetensors.torch
import torch

from famix.cli import main
from famix.config import Config, load_config, save_config
from famix.engine.checkpoint import load_checkpoint, save_checkpoint
from famix.models.clip import build_clip, load_clip_state_dict
from famix.stages.convert import convert_bank, convert_checkpoint, convert_clip
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


def _cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def _pickle_bank(path, value=2.0):
    path.write_bytes(
        pickle.dumps({"road_mu": [torch.full((8, 1, 1), value)], "road_std": [torch.ones(8, 1, 1)]})
    )
    return path


def test_convert_never_replaces_a_file_it_did_not_write(tmp_path, capsys):
    src = _pickle_bank(tmp_path / "bank.pkl")
    mined = tmp_path / "mined.safetensors"  # hours of `famix mine`
    StyleBank(["road"], 8, metadata={"run": {"settings": {}}}).save(mined)
    before = mined.read_bytes()
    argv = ["convert", "bank", str(src), str(mined), "--trust-pickle"]
    err = _cli_error(argv, capsys)
    assert err == (
        f"famix convert: error: {mined} exists and is not a style bank written by `famix convert bank`: "
        "famix does not replace it. Pass another path, or --force to overwrite it"
    )
    assert mined.read_bytes() == before
    main([*argv, "--force"])
    assert StyleBank.load(mined).metadata["source"] == "official pickle bank.pkl"
    _pickle_bank(src, value=3.0)
    main(argv)  # a bank this conversion wrote: replaced without --force
    assert StyleBank.load(mined).styles["road"][0].eq(3.0).all()


def test_convert_checkpoint_and_clip_refuse_other_files_before_any_work(tmp_path, capsys):
    from famix.stages.convert import run

    latest = tmp_path / "latest.pt"  # a training run's resumable checkpoint
    save_checkpoint(latest, model_state={"w": torch.ones(1)}, optimizer_state={}, cur_itrs=7, best_score=1.0)
    with pytest.raises(FileExistsError, match="latest.pt exists and is not a checkpoint written by `famix "):
        run("checkpoint", str(tmp_path / "missing.pth"), str(latest))
    converted = tmp_path / "converted.pt"  # what convert_checkpoint writes: replaceable
    save_checkpoint(
        converted, model_state={"w": torch.ones(1)}, config={"model": {}}, cur_itrs=0, best_score=-1.0
    )
    with pytest.raises(FileNotFoundError, match="missing.pth not found"):  # past the dst check, to the src
        run("checkpoint", str(tmp_path / "missing.pth"), str(converted))
    with pytest.raises(FileNotFoundError, match="missing.pth not found"):
        run("checkpoint", str(tmp_path / "missing.pth"), str(latest), force=True)
    notes = tmp_path / "notes.safetensors"
    notes.write_text("not weights")
    model = build_clip("tiny-rn", seed=3)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(
        FileExistsError, match="is not CLIP weights \\(safetensors\\) written by `famix convert"
    ):
        run("clip", str(tmp_path / "w.pt"), str(notes))
    assert notes.read_text() == "not weights"
    run("clip", str(tmp_path / "w.pt"), str(tmp_path / "w.safetensors"))
    run("clip", str(tmp_path / "w.pt"), str(tmp_path / "w.safetensors"))  # its own output: replaced
    err = _cli_error(["convert", "clip", str(tmp_path / "w.pt"), str(latest / "w.safetensors")], capsys)
    assert err == (
        f"famix convert: error: dst {latest / 'w.safetensors'}: {latest} is a file, not a folder, so nothing "
        "can be written under it; pass a path in a folder"
    )


def test_convert_removes_what_a_killed_conversion_left(tmp_path):
    from famix.stages.convert import run

    stale = tmp_path / ".b.safetensors.x1y2z3.tmp"
    stale.write_bytes(b"half a bank")
    run("bank", str(_pickle_bank(tmp_path / "bank.pkl")), str(tmp_path / "b.safetensors"), trust_pickle=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.safetensors", "bank.pkl"]


def test_convert_bank_says_what_a_file_that_is_no_pickle_bank_is(tmp_path, capsys):
    expected = (
        "the official FAMix pickle bank, a dict of '<class>_mu' / '<class>_std' lists of [C, 1, 1] tensors"
    )
    text = tmp_path / "notes.txt"
    text.write_text("hello\nworld\n")
    famix_bank = StyleBank(["road"], 8).save(tmp_path / "bank.safetensors")
    plain = tmp_path / "w.safetensors"
    safetensors.torch.save_file({"x": torch.ones(2)}, str(plain))
    archive = tmp_path / "bank.pt"
    torch.save({"road_mu": []}, archive)
    listed = tmp_path / "list.pkl"
    listed.write_bytes(pickle.dumps([1, 2]))
    wrong = tmp_path / "wrong.pkl"
    wrong.write_bytes(pickle.dumps({"road_mu": "fast", "road_std": [torch.ones(1)]}))
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(pickle.dumps({"road_mu": [torch.ones(8, 1, 1)]})[:40])
    cases = [
        (
            text,
            f"{text} is not a pickle file (it starts with b'hello\\nwo'): `famix convert bank` reads "
            f"{expected}",
        ),
        (
            famix_bank,
            f"{famix_bank} is already a famix style bank (safetensors): use it as it is, no conversion",
        ),
        (plain, f"{plain} is a safetensors file, not a pickle: `famix convert bank` reads {expected}"),
        (
            archive,
            f"{archive} is a zip archive (torch.save?), not a pickle: `famix convert bank` reads {expected}",
        ),
        (listed, f"{listed} holds a list, not {expected}"),
        (wrong, f"{wrong} holds a dict with keys ['road_mu', 'road_std'], not {expected}"),
        (tmp_path / "nope.pkl", f"style bank {tmp_path / 'nope.pkl'} not found: pass {expected}"),
    ]
    for src, message in cases:
        err = _cli_error(
            ["convert", "bank", str(src), str(tmp_path / "out.safetensors"), "--trust-pickle"], capsys
        )
        assert err == f"famix convert: error: {message}"
    err = _cli_error(
        ["convert", "bank", str(cut), str(tmp_path / "out.safetensors"), "--trust-pickle"], capsys
    )
    assert err.startswith(f"famix convert: error: cannot unpickle {cut} (") and "is the file complete?" in err
    err = _cli_error(["convert", "bank", str(text), str(tmp_path / "out.safetensors")], capsys)
    assert "is not a pickle file" in err  # said before asking for --trust-pickle
    assert not (tmp_path / "out.safetensors").exists()
