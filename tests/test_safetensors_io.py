"""famix's safetensors files are byte-reproducible: ``io.save_safetensors`` rewrites the header safetensors
orders by a per-process hash as canonical JSON, keeping what the file loads as; the same bank mined twice
gives the same bytes."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from famix.io import save_safetensors

os.environ["HF_HUB_OFFLINE"] = "1"
TINY = str(Path(__file__).resolve().parents[1] / "src" / "famix" / "configs" / "tiny.yaml")
METADATA = {f"key{k}": f"value {k} ü" for k in range(12)}


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "b/sigma": torch.rand(5, 3, generator=g),
        "a/mu": torch.randn(2, 7, generator=g).half(),
        "c": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "empty": torch.zeros(0, 4),
    }


def header(path: Path) -> bytes:
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return data[8 : 8 + size]


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118 (not a dict)


def test_save_safetensors_loads_as_written_with_a_canonical_header(tmp_path):
    path = save_safetensors(tensors(), tmp_path / "sub" / "x.safetensors", METADATA)
    loaded, metadata = read(path)
    assert metadata == METADATA and loaded.keys() == tensors().keys()
    for name, value in tensors().items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value), name
    text = header(path)
    assert len(text) % 8 == 0
    parsed = json.loads(text)
    assert (
        text.rstrip(b" ")
        == json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    # the data bytes are safetensors' own
    save_file(tensors(), str(tmp_path / "plain.safetensors"), metadata=METADATA)
    plain = (tmp_path / "plain.safetensors").read_bytes()
    assert path.read_bytes()[8 + len(text) :] == plain[8 + len(header(tmp_path / "plain.safetensors")) :]


def test_a_header_of_another_length_is_rewritten_with_the_data_moved(tmp_path):
    """A writer that spaces its JSON (a header longer than the canonical one) still ends up canonical."""
    from famix.io import _canonicalize_header

    save_file(tensors(), str(tmp_path / "plain.safetensors"), metadata=METADATA)
    plain = tmp_path / "plain.safetensors"
    spaced = json.dumps(json.loads(header(plain)), indent=4).encode()
    spaced += b" " * (-len(spaced) % 8)
    data = plain.read_bytes()[8 + len(header(plain)) :]
    odd = tmp_path / "odd.safetensors"
    odd.write_bytes(struct.pack("<Q", len(spaced)) + spaced + data)
    _canonicalize_header(odd)
    assert (
        odd.read_bytes() == save_safetensors(tensors(), tmp_path / "canon.safetensors", METADATA).read_bytes()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "canon.safetensors",
        "odd.safetensors",
        "plain.safetensors",
    ]


def test_two_processes_write_the_same_bank_bytes(tmp_path):
    code = (
        "import sys, torch\n"
        "from famix.style.bank import StyleBank\n"
        "names = [f'class{k}' for k in range(8)]\n"
        "bank = StyleBank(names, 3, metadata={'model': {'backbone': 'x', 'b': 1, 'a': [1, 2]}, 'z': 'y'})\n"
        "g = torch.Generator().manual_seed(0)\n"
        "bank.add(torch.randn(40, 3, generator=g), torch.rand(40, 3, generator=g), torch.arange(40) % 9, 8)\n"
        "bank.save(sys.argv[1])\n"
    )
    paths = [tmp_path / f"bank{k}.safetensors" for k in range(2)]
    for path in paths:
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_famix_mine_twice_writes_byte_identical_banks(tmp_path):
    paths = [tmp_path / f"run{k}" / "bank.safetensors" for k in range(2)]
    for path in paths:
        cmd = [sys.executable, "-m", "famix", "mine", "-c", TINY, f"style.bank={path}"]
        cmd += ["mine.max_images=4", "mine.steps=1"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert paths[0].read_bytes() == paths[1].read_bytes()
