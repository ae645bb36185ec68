"""``io.file_fingerprint`` is famix's one way to identify a file by its content (run inputs, CLIP weights,
exported sources): sha256 of its bytes, 16 hex digits."""

import hashlib

from famix.io import file_fingerprint
from famix.models.clip import weights_fingerprint


def test_file_fingerprint_of_known_bytes(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"styles")
    assert file_fingerprint(path) == "sha256:90a7578caf8760be"  # sha256(b"styles")[:16]
    assert file_fingerprint(str(path)) == "sha256:90a7578caf8760be"
    (tmp_path / "empty.bin").write_bytes(b"")
    assert file_fingerprint(tmp_path / "empty.bin") == "sha256:e3b0c44298fc1c14"  # sha256(b"")[:16]
    assert file_fingerprint(None) is None


def test_file_fingerprint_is_the_content_read_in_chunks(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    data = bytes(range(256)) * (3 * 4096 + 7)  # three 1 MiB chunks and a rest
    a.write_bytes(data)
    b.write_bytes(data)
    assert file_fingerprint(a) == file_fingerprint(b) == f"sha256:{hashlib.sha256(data).hexdigest()[:16]}"
    b.write_bytes(data[:-1] + b"\x00")
    assert file_fingerprint(b) != file_fingerprint(a)


def test_weights_fingerprint_of_a_file_is_its_file_fingerprint(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"styles")
    assert weights_fingerprint(str(path)) == file_fingerprint(path) == "sha256:90a7578caf8760be"
    assert weights_fingerprint(None) == "random" and weights_fingerprint("openai") == "openai"
