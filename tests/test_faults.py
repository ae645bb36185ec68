"""Faults a real run meets: a real SIGINT (Ctrl-C) or SIGTERM in the middle of training or mining stops it at
the next safe point with one line saying what was saved; the same command then resumes to exactly what an
uninterrupted run computes. The signals are sent by the process to itself from inside a step, so where they
land does not depend on timing."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from famix.cli import main
from famix.engine.checkpoint import load_checkpoint
from famix.stages import mine
from famix.style.bank import StyleBank

FAST = ["data.val=[]", "data.train=synthetic:day:8:size=48", "data.crop=32", "mine.crop=32", "data.workers=0"]
MINE = ["data.train=synthetic:day:12:size=48", "mine.steps=1", "mine.max_images=12"]  # 3 batches of 4
TRAIN = ["train", "-c", "tiny", *FAST, "style.mix=mixstyle", "train.iterations=6", "train.ckpt_interval=100"]


def _signal_at(monkeypatch, module, name: str, call: int, signum=signal.SIGINT):
    """Make the ``call``-th call of ``module.name`` send ``signum`` to this process while it runs."""
    real, calls = getattr(module, name), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def _last_line(capsys) -> str:
    """The command's last line on stderr (progress bars come before it), which must follow no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def _state(path):
    return load_checkpoint(path)["model_state"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_training_stops_at_a_step_and_the_same_command_resumes_bit_for_bit(
    tmp_path, monkeypatch, capsys, signum
):
    from famix.engine import train as loop

    main([*TRAIN, f"train.out={tmp_path / 'straight'}"])
    straight = _state(tmp_path / "straight" / "latest.pt")
    _signal_at(monkeypatch, loop, "train_step", 3, signum)  # during step 3
    command = [*TRAIN, f"train.out={tmp_path / 'run'}"]
    with pytest.raises(SystemExit) as stopped:
        main(command)
    err = _last_line(capsys)
    latest = tmp_path / "run" / "latest.pt"
    assert stopped.value.code == 130
    assert err == (
        f"famix train: interrupted: stopped at step 3 of 6; {latest} holds it: run the same command to resume"
    )
    assert load_checkpoint(latest)["cur_itrs"] == 3 and not (tmp_path / "run" / "best.pt").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are given back
    monkeypatch.undo()
    main(command)
    resumed = _state(latest)
    assert load_checkpoint(latest)["cur_itrs"] == 6
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_a_signal_during_mining_stops_after_a_round_and_the_same_command_resumes_bit_for_bit(
    tmp_path, monkeypatch, capsys
):
    from famix.config import load_config

    def cfg(bank):
        return load_config("tiny", [*FAST, *MINE, f"style.bank={bank}"])

    straight = mine.run(cfg(tmp_path / "straight.safetensors"), progress=False)
    _signal_at(monkeypatch, mine, "mine_batches", 2)  # during the second batch (of three)
    bank = tmp_path / "bank.safetensors"
    command = ["mine", "-c", "tiny", *FAST, *MINE, f"style.bank={bank}"]
    with pytest.raises(SystemExit) as stopped:
        main(command)
    err = _last_line(capsys)
    assert stopped.value.code == 130
    assert err == (
        f"famix mine: interrupted: stopped after 2 of 3 batches; {bank} holds them: run the same command to "
        "resume"
    )
    assert StyleBank.load(bank).batches_done == 2
    monkeypatch.undo()
    main(command)
    a, b = StyleBank.load(bank).packed(), straight.packed()
    assert StyleBank.load(bank).batches_done == 3
    assert torch.equal(a.mu, b.mu) and torch.equal(a.sigma, b.sigma) and torch.equal(a.counts, b.counts)


def test_a_second_ctrl_c_stops_at_once(tmp_path, monkeypatch, capsys):
    from famix.engine import train as loop

    real = loop.train_step

    def twice(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the second one raises KeyboardInterrupt here
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", twice)
    with pytest.raises(SystemExit) as stopped:
        main([*TRAIN, f"train.out={tmp_path / 'run'}"])
    assert stopped.value.code == 130
    assert _last_line(capsys) == "famix train: interrupted: stopped before anything resumable was saved"
    assert not (tmp_path / "run" / "latest.pt").exists()


def _wait_for(path, proc, what: str):
    """Wait until ``path`` exists (the subprocess got there), failing if ``proc`` ended first."""
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the first command ended (rc {proc.returncode}) before {what}")
        time.sleep(0.05)


def test_two_commands_on_one_run_folder_the_second_refuses(tmp_path, capsys):
    out = tmp_path / "run"
    first = [*TRAIN, f"train.out={out}", "train.iterations=100000"]  # runs until stopped
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
        "OMP_NUM_THREADS": "1",
    }
    with open(tmp_path / "first.log", "w") as log:  # a file, not a pipe: progress never blocks the command
        proc = subprocess.Popen([sys.executable, "-m", "famix", *first], stderr=log, env=env)
        try:
            _wait_for(out / ".famix.lock", proc, "it took the run folder")
            with pytest.raises(SystemExit) as refused:
                main([*TRAIN, f"train.out={out}"])
            err = _last_line(capsys)
            assert refused.value.code == 2
            assert err == (
                f"famix train: error: train.out {out} is being written by another famix command "
                f"(pid {proc.pid}): wait for it to finish, or pass another train.out"
            )
            _wait_for(out / "metrics.jsonl", proc, "it trained a step")
        finally:
            proc.send_signal(signal.SIGTERM)  # a real SIGTERM to a real process: it stops at a step, saved
            rc = proc.wait()
    last = (tmp_path / "first.log").read_text().strip().splitlines()[-1]
    assert rc == 130 and last.startswith("famix train: interrupted: stopped at step "), last
    assert not (out / ".famix.lock").exists() and load_checkpoint(out / "latest.pt")["cur_itrs"] >= 1


def test_a_lock_left_by_a_killed_command_is_taken_over(tmp_path):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    out = tmp_path / "run"
    out.mkdir()
    (out / ".famix.lock").write_text(f"{gone.stdout.strip()} {socket.gethostname()}\n")
    main([*TRAIN, f"train.out={out}", "train.iterations=2"])
    assert load_checkpoint(out / "latest.pt")["cur_itrs"] == 2 and not (out / ".famix.lock").exists()
    assert os.path.samefile(out / "best.pt", out / "latest.pt")  # one stored file for the finished run


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB file system (tmpfs) where the machine lets the test mount one (root), else the test skips."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()[:200]}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)  # lazy: this mount table may not list it by path


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(small_disk, checkpoint, capsys):
    out = small_disk / "run"  # a tiny segmenter's checkpoint is some 40 MB: it cannot fit
    with pytest.raises(SystemExit) as failed:
        main([*TRAIN, f"train.out={out}", "train.iterations=2"])
    err = _last_line(capsys)
    assert failed.value.code == 2
    assert err.startswith(f"famix train: error: [Errno 28] the disk holding {out} is full (")
    assert f"{out / 'latest.pt'} was not written" in err and ".tmp" not in err
    # no temp file, no lock (tb/: TensorBoard's log, where it is installed)
    assert sorted(p.name for p in out.iterdir() if p.name != "tb") == ["config.yaml", "metrics.jsonl"]
    out = small_disk / "model.torchscript.pt"  # TorchScript aborts the process on a full disk: checked first
    with pytest.raises(SystemExit) as failed:
        main(["export", str(checkpoint), "--format", "torchscript", "--size", "32", "--out", str(out)])
    err = _last_line(capsys)
    assert (
        failed.value.code == 2
        and f"the disk holding {small_disk} has " in err
        and f"{out} needs about" in err
    )
    assert not [p.name for p in small_disk.iterdir() if p.name != "run"]
