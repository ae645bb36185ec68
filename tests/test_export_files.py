"""famix export's output file: the path checked before any work, no file replaced that famix did not
export in that format (unless --force), stale temporary files removed; and exported models refused as
checkpoints with a message that says what they are."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from PIL import Image

from famix.cli import main
from famix.engine import checkpoint as checkpoint_module
from famix.engine.checkpoint import load_checkpoint, load_segmenter
from famix.engine.exported import archive_format, read_metadata
from famix.settings import ExportSettings
from famix.stages.export import export_model


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def _export(checkpoint, out, fmt="torchscript", *extra):
    return ["export", str(checkpoint), "--format", fmt, "--size", "32", "--out", str(out), *extra]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the checkpoint is loaded: the output path must be refused before any work."""

    def load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the output path was checked")

    monkeypatch.setattr(checkpoint_module, "load_segmenter", load)


def test_export_never_replaces_a_checkpoint(checkpoint, tmp_path, capsys, monkeypatch):
    latest = tmp_path / "latest.pt"  # a run's resumable checkpoint
    shutil.copy(checkpoint, latest)
    before = latest.read_bytes()
    with monkeypatch.context() as m:
        m.setattr(checkpoint_module, "load_segmenter", lambda *a, **k: pytest.fail("loaded before the check"))
        err = _fails(_export(checkpoint, latest), capsys)
    assert err == (
        f"famix export: error: {latest} exists and is not a torchscript file written by `famix export`: "
        "famix does not replace it. Pass another path, or --force to overwrite it"
    )
    assert latest.read_bytes() == before
    main(_export(checkpoint, latest, "torchscript", "--force"))
    assert archive_format(latest) == "torchscript" and read_metadata(latest, "torchscript")["format"]


def test_export_replaces_its_own_export_of_the_same_format_only(checkpoint, tmp_path, capsys):
    out = tmp_path / "model.pt"
    main(_export(checkpoint, out))
    first = read_metadata(out, "torchscript")
    assert first is not None and read_metadata(out, "exported-program") is None
    main(_export(checkpoint, out))  # the same format again: replaced
    assert read_metadata(out, "torchscript") == first
    err = _fails(_export(checkpoint, out, "exported-program"), capsys)
    assert f"{out} exists and is not an exported-program file written by `famix export`" in err
    assert archive_format(out) == "torchscript"
    junk = tmp_path / "other.onnx"  # not ONNX at all, or an ONNX file famix did not write
    junk.write_bytes(b"someone's file")
    assert read_metadata(junk, "onnx") is None


def test_export_removes_what_a_killed_export_left(checkpoint, tmp_path):
    out = tmp_path / "m.torchscript.pt"
    stale = tmp_path / ".m.torchscript.pt.k1ll3d.tmp"  # atomic_path's naming for out
    stale.write_bytes(b"x" * 1000)
    other = tmp_path / ".best.pt.k1ll3d.tmp"  # another file's: not this export's to remove
    other.write_bytes(b"x")
    main(_export(checkpoint, out))
    assert out.is_file() and not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.pt.k1ll3d.tmp", "m.torchscript.pt"]


def test_export_output_path_errors_say_what_is_wrong_with_it(checkpoint, tmp_path, capsys, no_work):
    a_file = tmp_path / "latest.pt"
    a_file.write_bytes(b"a file")
    for out in (a_file / "model.pt", a_file / "sub" / "model.pt"):
        err = _fails(_export(checkpoint, out), capsys)
        assert err == (
            f"famix export: error: --out {out}: {a_file} is a file, not a folder, so nothing can be written "
            "under it; pass a path in a folder"
        )
    err = _fails(_export(checkpoint, tmp_path), capsys)
    assert err == f"famix export: error: --out {tmp_path} is a folder: pass the path of the file to write"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]  # no hidden temporary file either


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write in any folder")
def test_export_into_a_folder_without_write_permission(checkpoint, tmp_path, capsys, no_work):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        err = _fails(_export(checkpoint, locked / "new" / "model.pt"), capsys)
    finally:
        locked.chmod(0o755)
    assert f"no permission to write in the folder {locked}; pass a path in a folder you can write" in err


def test_missing_folders_are_created(checkpoint, tmp_path):
    out = tmp_path / "a" / "b" / "model.pt"
    main(_export(checkpoint, out))
    assert archive_format(out) == "torchscript"


def test_exported_models_are_refused_as_checkpoints(checkpoint, tmp_path, capsys):
    model, cfg = load_segmenter(checkpoint)
    ts, pt2 = tmp_path / "model.pt", tmp_path / "model.pt2"  # a TorchScript file may well end in .pt
    export_model(model, cfg, ts, ExportSettings("torchscript", (32, 32)))
    export_model(model, cfg, pt2, ExportSettings("exported-program", (32, 32)))
    assert archive_format(ts) == "torchscript" and archive_format(pt2) == "exported-program"
    assert archive_format(checkpoint) is None  # a torch.save zip is neither
    for path, name, loader in [
        (ts, "TorchScript", "torch.jit.load"),
        (pt2, "torch.export (.pt2)", "torch.export.load"),
    ]:
        with pytest.raises(ValueError) as e:
            load_checkpoint(path)
        assert str(e.value) == (
            f"{path} is an exported model ({name}), not a checkpoint: evaluate the checkpoint it was "
            "exported from (famix predict runs that checkpoint too, or its `famix export --format onnx` "
            f"file); load this file with {loader}"
        )
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x08")
    with pytest.raises(
        ValueError, match=r"model\.onnx is an exported model \(ONNX\), not a checkpoint: .*famix predict"
    ):
        load_checkpoint(onnx)
    foreign = tmp_path / "clip.pt"  # a TorchScript archive famix did not write, like OpenAI's CLIP weights
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(foreign))
    with pytest.raises(ValueError, match="is a TorchScript model archive, not a checkpoint: pass the .pt"):
        load_checkpoint(foreign)
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    err = _fails(["predict", str(ts), str(image), "--out", str(tmp_path / "o")], capsys)
    assert err.startswith(f"famix predict: error: {ts} is an exported model (TorchScript), not a checkpoint")
    assert "weights_only" not in err
