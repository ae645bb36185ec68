"""End-to-end runs of the real entry points on the synthetic world with the tiny CLIP config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from famix.cli import main
from famix.config import load_config
from famix.engine.checkpoint import load_checkpoint
from famix.stages.train import run as train

os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "src" / "famix" / "configs" / "tiny.yaml")


def tiny_cfg(out, *extra):
    return load_config(TINY, [f"train.out={out}", *extra])


def test_resume_equals_straight_run(tmp_path):
    common = ["style.mix=mixstyle", "train.val_interval=20", "train.log_interval=5"]
    straight = tiny_cfg(tmp_path / "a", "train.iterations=40", *common)
    train(straight)
    first = tiny_cfg(tmp_path / "b", "train.iterations=40", "train.stop_after=20", *common)
    train(first)
    resumed = tiny_cfg(tmp_path / "b", "train.iterations=40", *common)
    train(resumed)
    a = load_checkpoint(tmp_path / "a" / "latest.pt")
    b = load_checkpoint(tmp_path / "b" / "latest.pt")
    assert a["cur_itrs"] == b["cur_itrs"] == 40
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), k
    momentum = [s["momentum_buffer"] for s in a["optimizer_state"]["state"].values()]
    assert momentum and all(
        torch.equal(x, s["momentum_buffer"])
        for x, s in zip(momentum, b["optimizer_state"]["state"].values(), strict=True)
    )
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == list(range(5, 41, 5))
    assert (tmp_path / "b" / "config.yaml").is_file() and (tmp_path / "b" / "best.pt").is_file()


def test_cli_mine_train_eval_predict(tmp_path, capsys):
    bank = tmp_path / "bank.safetensors"
    main(["mine", "-c", TINY, f"style.bank={bank}", "mine.max_images=8", "mine.steps=2"])
    assert "styles" in capsys.readouterr().out
    run = tmp_path / "run"
    main(
        [
            "train",
            "-c",
            TINY,
            f"train.out={run}",
            f"style.bank={bank}",
            "train.iterations=6",
            "train.val_interval=3",
        ]
    )
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["config"]["style"]["bank"] == str(bank)
    main(
        [
            "eval",
            str(run / "latest.pt"),
            "--data",
            "synthetic:fog:3:5:size=64",
            "synthetic:night:2:5:size=64",
            "--workers",
            "0",
            "--json",
            str(tmp_path / "eval.json"),
        ]
    )
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "eval.json").read_text())["datasets"]
    assert set(results) == {"synthetic:fog:3:5:size=64", "synthetic:night:2:5:size=64"}
    assert f"{results['synthetic:fog:3:5:size=64']['miou']:.2f}" in out  # percent, in the table and JSON
    from PIL import Image

    Image.new("RGB", (40, 30), (120, 30, 200)).save(tmp_path / "x.png")
    main(["predict", str(run / "latest.pt"), str(tmp_path / "x.png"), "--out", str(tmp_path / "pred")])
    assert Image.open(tmp_path / "pred" / "x_trainid.png").size == (40, 30)


def test_bank_with_wrong_channel_count_is_a_clear_error(tmp_path, capsys):
    from famix.data.trainids import CLASS_NAMES
    from famix.style.bank import StyleBank

    bad = StyleBank(list(CLASS_NAMES), 256, metadata={"backbone": "RN50"})
    bad.add(torch.ones(2, 256), torch.ones(2, 256), torch.tensor([0, 1]), 255)
    bad.save(tmp_path / "rn50.safetensors")
    with pytest.raises(SystemExit):
        main(
            [
                "train",
                "-c",
                TINY,
                f"train.out={tmp_path / 'r'}",
                f"style.bank={tmp_path / 'rn50.safetensors'}",
            ]
        )
    err = capsys.readouterr().err
    assert "256-channel styles" in err and "64 channels" in err and "famix mine" in err


def test_missing_weights_file_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "-c", TINY, f"train.out={tmp_path}", "model.weights=/nope/RN50.pt"])
    assert "/nope/RN50.pt" in capsys.readouterr().err


def test_torchrun_two_processes_on_cpu(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29517",
        "-m",
        "famix",
        "train",
        "-c",
        TINY,
        f"train.out={tmp_path}",
        "train.iterations=4",
        "train.val_interval=4",
        "style.mix=mixstyle",
        "data.batch_size=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "latest.pt")
    assert ckpt["cur_itrs"] == 4


def test_non_finite_loss_stops_with_a_clear_message_and_writes_nothing(tmp_path):
    cfg = tiny_cfg(tmp_path, "train.lr=1e30", "train.iterations=20", "train.log_interval=2", "style.mix=none")
    with pytest.raises(FloatingPointError) as stopped:
        train(cfg)
    assert str(stopped.value).startswith("non-finite training loss near step ")
    # it names the checkpoint that really exists: none yet (an earlier message promised a "last good" one)
    assert f"stopped without saving (no checkpoint in {tmp_path} yet)" in str(stopped.value)
    assert not (tmp_path / "latest.pt").exists()


def test_mining_resumes_to_the_same_bank(tmp_path):
    from famix.stages.mine import run as mine
    from famix.style.bank import StyleBank

    def run(out, images):
        return mine(
            load_config(TINY, [f"style.bank={out}", f"mine.max_images={images}", "mine.steps=2"]), False
        )

    straight = run(tmp_path / "a.safetensors", 8)
    run(tmp_path / "b.safetensors", 4)  # "interrupted" after one batch of 4
    resumed = run(tmp_path / "b.safetensors", 8)
    assert resumed.metadata["batches_done"] == 2 and len(straight) == len(resumed) == 8 * 9
    reloaded = StyleBank.load(tmp_path / "b.safetensors")
    for name, (mu, sigma) in straight.styles.items():
        assert torch.equal(mu, reloaded.styles[name][0]) and torch.equal(sigma, reloaded.styles[name][1])
    with pytest.raises(FileExistsError, match="other settings"):
        mine(load_config(TINY, [f"style.bank={tmp_path / 'b.safetensors'}", "mine.steps=3"]), False)


def test_resume_with_other_settings_is_refused_naming_the_keys(tmp_path):
    """The scenario a new user hit: 20 iterations at lr 0.05, then the same train.out with other settings
    used to resume silently on the old schedule and write a config.yaml it never used."""
    train(tiny_cfg(tmp_path, "train.iterations=20", "style.mix=mixstyle"))
    before = (tmp_path / "config.yaml").read_text(), (tmp_path / "latest.pt").read_bytes()
    other = tiny_cfg(tmp_path, "train.iterations=40", "train.lr=0.01", "style.mix=none")
    with pytest.raises(FileExistsError, match="other settings") as err:
        train(other)
    for key in ("train.iterations: 20 -> 40", "train.lr: 0.05 -> 0.01", "style.mix: 'mixstyle' -> 'none'"):
        assert key in str(err.value)
    assert ((tmp_path / "config.yaml").read_text(), (tmp_path / "latest.pt").read_bytes()) == before
    # settings that do not change the result may differ: logging, validation, workers, device, stop_after
    same = tiny_cfg(
        tmp_path, "train.iterations=20", "style.mix=mixstyle", "train.log_interval=2", "train.val_interval=7",
        "run.device=cpu", "data.workers=0", "train.stop_after=20", "train.ckpt_interval=3",
    )  # fmt: skip
    assert train(same)["step"] == 20


def test_checkpoint_interval_and_metrics_after_a_crash(tmp_path, monkeypatch):
    """A crash loses at most ckpt_interval steps; the resumed run's metrics.jsonl has every step once, and
    the temporary files of an interrupted atomic write are removed."""
    from famix.engine import train as train_module

    common = ["train.iterations=12", "train.val_interval=100", "train.log_interval=1", "style.mix=mixstyle"]
    real_step, calls = train_module.train_step, []

    def crash_at_step_8(*args):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt  # as a kill between checkpoints
        return real_step(*args)

    monkeypatch.setattr(train_module, "train_step", crash_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(tmp_path, "train.ckpt_interval=5", *common))
    assert (
        load_checkpoint(tmp_path / "latest.pt")["cur_itrs"] == 5
    )  # no validation yet: the interval saved it
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 8))  # logged past the checkpoint
    (tmp_path / ".latest.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # left by a kill -9 mid-write
    monkeypatch.setattr(train_module, "train_step", real_step)
    train(tiny_cfg(tmp_path, "train.ckpt_interval=5", *common))
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
    assert not list(tmp_path.glob(".*.tmp"))
    straight = tmp_path / "straight"
    train(tiny_cfg(straight, "train.ckpt_interval=5", *common))
    a, b = load_checkpoint(tmp_path / "latest.pt"), load_checkpoint(straight / "latest.pt")
    assert all(torch.equal(v, b["model_state"][k]) for k, v in a["model_state"].items())


def test_run_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        train(tiny_cfg(tmp_path, "train.iterations=2", "train.val_interval=2", "style.mix=none"))
    finally:
        os.umask(old)
    for name in ("latest.pt", "best.pt", "config.yaml", "metrics.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    from famix.io import atomic_write

    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "private.txt", lambda p: p.write_text("x"))
    finally:
        os.umask(old)
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600


def test_build_mixer_reads_a_real_bank_file(tmp_path):
    """build_mixer loads the bank file into the mixer, and an augment step gives each patch the style of
    its dominant class from that file."""
    from famix.data.trainids import CLASS_NAMES
    from famix.engine.train import build_mixer
    from famix.models.build import build_segmenter
    from famix.style.bank import StyleBank
    from famix.style.stats import patch_stats

    cfg = tiny_cfg(tmp_path / "r", f"style.bank={tmp_path / 'b.safetensors'}", "style.mix=augment")
    model = build_segmenter(cfg.model)
    c = model.style_channels
    g = torch.Generator().manual_seed(0)
    # mu far above sigma: the ReLU of the restyle never clips, so the patch stats are the style exactly
    styles = {0: (torch.rand(1, c, generator=g) + 10, 0.1 * torch.rand(1, c, generator=g) + 0.1)}
    bank = StyleBank(list(CLASS_NAMES), c)
    for k, (mu, sigma) in styles.items():
        bank.add(mu, sigma, torch.tensor([k]), 255)
    bank.save(cfg.style.bank)
    mixer = build_mixer(cfg, model, torch.device("cpu"))
    torch.testing.assert_close(mixer.bank.mu, styles[0][0])
    assert mixer.bank.counts.tolist() == [1] + [0] * 19
    f = torch.rand(2, c, 12, 12, generator=g) + 0.1
    labels = torch.zeros(2, 48, 48, dtype=torch.long)  # every patch: class 0 (road)
    mu, sigma = patch_stats(mixer(f, labels), 3)
    torch.testing.assert_close(mu, styles[0][0].view(1, c, 1, 1).expand_as(mu), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sigma, styles[0][1].view(1, c, 1, 1).expand_as(sigma), rtol=1e-3, atol=1e-3)


def test_training_and_eval_report_miou_in_the_same_unit(tmp_path, capsys):
    """Validation in metrics.jsonl and `famix eval` give the same number for the same model and data (%)."""
    spec = "synthetic:fog:3:4:size=64"
    main(
        [
            "train",
            "-c",
            TINY,
            f"train.out={tmp_path}",
            "train.iterations=3",
            "style.mix=none",
            f"data.val=[{spec}]",
        ]
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    val = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if "val_miou" in x][
        -1
    ]
    main(
        [
            "eval",
            str(tmp_path / "latest.pt"),
            "--data",
            spec,
            "--workers",
            "0",
            "--json",
            str(tmp_path / "e.json"),
        ]
    )
    evaluated = json.loads((tmp_path / "e.json").read_text())["datasets"][spec]["miou"]
    assert (
        val["val_miou"][spec] == pytest.approx(evaluated, abs=1e-9)
        and printed["best_miou"] == val["val_mean_miou"]
    )
    assert 1 < evaluated <= 100  # percent, not a fraction


def test_compiled_training_runs_and_matches_eager(tmp_path):
    """train.compile wraps the network in torch.compile (here the aot_eager backend: no C++ build on CI)."""
    common = ["train.iterations=2", "train.val_interval=2", "style.mix=mixstyle"]
    train(tiny_cfg(tmp_path / "eager", *common))
    train(tiny_cfg(tmp_path / "compiled", *common, "train.compile=aot_eager"))
    a = load_checkpoint(tmp_path / "eager" / "latest.pt")["model_state"]
    b = load_checkpoint(tmp_path / "compiled" / "latest.pt")["model_state"]
    assert a.keys() == b.keys()  # the compiled wrapper adds no prefix to the saved state
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_without_validation_data_best_pt_is_the_last_validated_model(tmp_path):
    common = ["style.mix=mixstyle", "data.val=[]", "train.iterations=4", "train.val_interval=2"]
    train(tiny_cfg(tmp_path, *common))
    best, latest = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "latest.pt")
    assert best["cur_itrs"] == latest["cur_itrs"] == 4  # not the first validation step's (2)
    assert all(torch.equal(v, latest["model_state"][k]) for k, v in best["model_state"].items())
