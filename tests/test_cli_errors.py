"""What a new user meets: one-line errors (never a traceback or a riddle) and small CLI behaviours."""

from __future__ import annotations

import builtins
import io
import json
from pathlib import Path

import pytest
import torch

from famix.cli import main
from famix.progress import progress_bar

ROOT = Path(__file__).resolve().parents[1]


def fails(argv, capsys) -> str:
    """Run the CLI, expect exit status 2 and return the one-line error it printed."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"famix {argv[0]}: error: ") and "Traceback" not in err
    return err


def test_device_errors(checkpoint, capsys, tmp_path):
    x = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(x)
    err = fails(["predict", str(checkpoint), str(x), "--out", str(tmp_path), "--device", "gpu"], capsys)
    assert "'gpu' is not a device: use auto, cpu, cuda, cuda:N or mps" in err
    if not torch.cuda.is_available():
        err = fails(["predict", str(checkpoint), str(x), "--out", str(tmp_path), "--device", "cuda"], capsys)
        assert "no CUDA GPU is visible" in err and "cpu" in err
    err = fails(["train", "-c", "tiny", f"train.out={tmp_path / 'r'}", "run.device=gpu"], capsys)
    assert "'gpu' is not a device" in err


def test_bad_checkpoints_and_specs(checkpoint, capsys, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("these are my notes, not a checkpoint\n")
    err = fails(["eval", str(text), "--data", "synthetic:day:2"], capsys)
    assert "notes.txt is not a PyTorch file" in err
    truncated = tmp_path / "half.pt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    err = fails(["eval", str(truncated), "--data", "synthetic:day:2"], capsys)
    assert "half.pt is truncated or corrupt" in err
    err = fails(["eval", str(checkpoint), "--data", "synthetic:day:ten"], capsys)
    assert "N (number of scenes) must be an integer, got 'ten'" in err


def test_yaml_error_names_file_and_line(capsys, tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("train:\n  lr: [0.1\n")
    err = fails(["train", "-c", str(bad)], capsys)
    assert "broken.yaml line" in err and "not valid YAML" in err


def test_video_without_pyav_says_how_to_install(checkpoint, capsys, tmp_path, monkeypatch):
    video = tmp_path / "drive.mp4"
    video.write_bytes(b"\x00" * 64)
    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    err = fails(["predict", str(checkpoint), str(video), "--out", str(tmp_path / "o")], capsys)
    assert 'pip install "famix[video]"' in err


def test_messages_name_only_options_that_exist():
    # `--backbone` was named in hints although only `famix demo` has such a flag: hints name model.backbone
    from famix.cli import build_parser

    parsers = build_parser()._subparsers._group_actions[0].choices
    have = sorted(name for name, p in parsers.items() if "--backbone" in p._option_string_actions)
    assert have == ["demo"]
    offenders = [
        p.name
        for p in (ROOT / "src" / "famix").rglob("*.py")
        if "--backbone" in p.read_text()
        and p.relative_to(ROOT / "src" / "famix").parts[0] not in ("cli_parser.py", "demo")
    ]
    assert offenders == []


def test_eval_prints_each_table_once_and_names_results_by_data(checkpoint, capsys):
    specs = ["synthetic:fog:2:3:size=32", "synthetic:night:2:3:size=32"]
    main(["eval", str(checkpoint), "--data", *specs, "--per-class", "--workers", "0"])
    out = capsys.readouterr().out
    assert out.count("| mIoU |") == 1 and out.count("| road |") == 1
    first = checkpoint.with_name("best.eval.synthetic-fog-2-3-size=32.synthetic-night-2-3-size=32.json")
    assert first.is_file()
    main(["eval", str(checkpoint), "--data", specs[0], "--scale", "0.5", "--workers", "0"])
    second = checkpoint.with_name("best.eval.synthetic-fog-2-3-size=32.s0.5.json")
    assert second.is_file() and first.is_file()  # the first evaluation is not overwritten
    data = json.loads(second.read_text())
    assert data["unit"] == "percent" and data["test_time"]["scale"] == 0.5
    assert 0 <= data["datasets"][specs[0]]["miou"] <= 100


def test_progress_in_a_log_file_is_one_line_per_update():
    log = io.StringIO()  # not a terminal
    bar = progress_bar(range(3), desc="train", file=log, mininterval=0)
    for _ in bar:
        bar.set_postfix(loss="1.0")
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) >= 3
    assert lines[-1].startswith("train: 100% 3/3") and "loss=1.0" in lines[-1]
