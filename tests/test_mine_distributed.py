"""`torchrun -m famix mine` on CPU (gloo): the ranks share the batches and rank 0 writes the bank of one
process, bit for bit; a bank resumes across numbers of processes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from famix.config import load_config
from famix.stages.mine import run as mine
from famix.style.bank import StyleBank

os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "src" / "famix" / "configs" / "tiny.yaml")
# 20 images in batches of 4: 5 batches, 3 on rank 0 and 2 on rank 1; saves every 2 batches
SETTINGS = ["mine.steps=2", "mine.batch_size=4", "mine.save_every=2"]


def mine_here(bank: Path, images: int) -> StyleBank:
    return mine(load_config(TINY, [f"style.bank={bank}", f"mine.max_images={images}", *SETTINGS]), False)


def torchrun(bank: Path, images: int, port: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port)]
    cmd += ["-m", "famix", "mine", "-c", TINY, f"style.bank={bank}", f"mine.max_images={images}", *SETTINGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_same_bank(path: Path, expected: StyleBank) -> None:
    bank = StyleBank.load(path)
    assert bank.class_names == expected.class_names and bank.channels == expected.channels
    assert bank.metadata == expected.metadata and bank.counts() == expected.counts()
    for name, (mu, sigma) in expected.styles.items():
        assert torch.equal(bank.styles[name][0], mu) and torch.equal(bank.styles[name][1], sigma), name


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> StyleBank:
    """The bank of one process mining the 20 images in one go."""
    bank = mine_here(tmp_path_factory.mktemp("straight") / "bank.safetensors", 20)
    assert bank.metadata["batches_done"] == 5 and len(bank) > 0
    return bank


def test_two_processes_write_the_bank_of_one(tmp_path, straight):
    proc = torchrun(tmp_path / "bank.safetensors", 20, 29531)
    assert_same_bank(tmp_path / "bank.safetensors", straight)
    # each rank's bar counts its own share of the 5 batches
    assert "mine (rank 0): 100% 3/3" in proc.stderr and "mine (rank 1): 100% 2/2" in proc.stderr


def test_a_bank_resumes_across_numbers_of_processes(tmp_path, straight):
    bank = tmp_path / "bank.safetensors"
    mine_here(bank, 4)  # one process, "stopped" after batch 0
    proc = torchrun(bank, 16, 29533)  # two processes, stopped after batch 3: rank 0 mines 2, rank 1 1 and 3
    assert StyleBank.load(bank).metadata["batches_done"] == 4
    assert "mine (rank 0): 100% 2/2" in proc.stderr and "mine (rank 1): 100% 2/2" in proc.stderr
    mine_here(bank, 20)  # one process again, to the end
    assert_same_bank(bank, straight)
