"""famix from Python: famix.load of checkpoints, saved folders and Hub ids (the Hub's cache served offline),
Segmenter.predict against the files `famix predict` writes, save_pretrained round trips, the quick-start
notebook executed, and bad inputs named in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import famix
from famix.cli import main
from famix.engine import hub
from famix.settings import InferenceSettings
from famix.world.synthetic import render
from tests.cli_errors import one_line

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run with an evaluation beside its checkpoint, and three images (two sizes)."""
    root = tmp_path_factory.mktemp("api")
    out = root / "run"
    overrides = ["data.train=synthetic:day:8:size=48", "data.val=[]", "data.crop=32", "train.iterations=3"]
    main(["train", "-c", "tiny", *overrides, f"train.out={out}", "style.mix=mixstyle"])
    main(["eval", str(out / "latest.pt"), "--data", "synthetic:night:2:3:size=48", "--workers", "0"])
    images = []
    for i, size in enumerate([(48, 48), (40, 56), (48, 48)]):
        image, _ = render(70 + i, "fog", size)
        path = root / "images" / f"im{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(path)
        images.append(path)
    return out / "latest.pt", images


def written_maps(tmp_path, checkpoint, images) -> list[np.ndarray]:
    main(
        [
            "predict",
            str(checkpoint),
            *map(str, images),
            "--out",
            str(tmp_path / "pred"),
            "--outputs",
            "trainid",
        ]
    )
    return [np.array(Image.open(tmp_path / "pred" / f"{p.stem}_trainid.png")) for p in images]


def test_predict_equals_famix_predict_for_every_input_kind(trained, tmp_path):
    checkpoint, images = trained
    expected = written_maps(tmp_path, checkpoint, images)
    model = famix.load(checkpoint, device="cpu")
    assert model.num_classes == 19 and model.class_names[0] == "road"
    for path, want in zip(images, expected, strict=True):
        array = np.array(Image.open(path))
        kinds = [path, str(path), Image.open(path), array, torch.from_numpy(array).permute(2, 0, 1)]
        for image in kinds:
            got = model.predict(image)
            assert got.dtype == np.uint8 and got.shape == array.shape[:2] and np.array_equal(got, want), type(
                image
            )
        rgba = np.concatenate([array, np.full(array.shape[:2] + (1,), 7, np.uint8)], -1)
        assert np.array_equal(model.predict(rgba), want)  # alpha dropped
        grey = array[..., 1]
        assert np.array_equal(model.predict(grey), model.predict(np.repeat(grey[..., None], 3, -1)))
    mixed = [images[0], Image.open(images[1]), np.array(Image.open(images[2]))]
    got = model.predict(mixed)
    assert isinstance(got, list) and all(np.array_equal(g, w) for g, w in zip(got, expected, strict=True))
    logits = model.predict_logits(mixed)
    assert [tuple(x.shape) for x in logits] == [(19, 48, 48), (19, 40, 56), (19, 48, 48)]
    assert all(np.array_equal(x.argmax(0).numpy(), w) for x, w in zip(logits, expected, strict=True))
    batch = np.stack([np.array(Image.open(images[0])), np.array(Image.open(images[2]))])  # [2, H, W, 3]
    assert all(
        np.array_equal(g, w) for g, w in zip(model.predict(batch), [expected[0], expected[2]], strict=True)
    )


def test_save_pretrained_round_trip_and_model_card(trained, tmp_path):
    checkpoint, _ = trained
    folder = famix.save_pretrained(checkpoint, tmp_path / "shared")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    for p in folder.iterdir():  # no pickle, no torch zip archive
        head = p.read_bytes()[:2]
        assert head not in (b"\x80\x02", b"\x80\x04", b"PK"), p
    a, b = famix.load(checkpoint, device="cpu"), famix.load(folder, device="cpu")
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(a.network(x), b.network(x))
    card = (folder / "README.md").read_text()
    result = json.loads(next(checkpoint.parent.glob("latest.eval.*.json")).read_text())
    spec, r = next(iter(result["datasets"].items()))
    row = f"| `{spec}` | paper | plain, fp32 | {r['miou']:.2f} |"  # data, protocol, test-time setting, mIoU
    assert card.startswith("---\nlicense: mit\nlibrary_name: famix\n") and row in card
    assert "value: " + str(round(r["miou"], 2)) in card  # the Hub's model-index block
    config = json.loads((folder / "config.json").read_text())
    assert (
        config["famix"]["version"] == famix.__version__
        and config["label_set"]["classes"][0]["name"] == "road"
    )
    again = b.save_pretrained(tmp_path / "again")  # a loaded model saves the same weights
    assert (again / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert f"| `{spec}` |" in (a.save_pretrained(tmp_path / "from-model") / "README.md").read_text()
    main(["save", str(folder), str(tmp_path / "third")])  # a folder re-saved: its evaluations kept
    assert f"| `{spec}` |" in (tmp_path / "third" / "README.md").read_text()


def hub_cache(tmp_path: Path, folder: Path, repo: str, commit: str = "0123456789abcdef") -> Path:
    """A Hugging Face cache holding ``folder`` as ``repo``'s main revision, laid out as the Hub's client
    writes it (models--OWNER--NAME/refs/main and snapshots/<commit>/...)."""
    cache = tmp_path / "hf-cache"
    entry = cache / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    snapshot = entry / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for p in folder.iterdir():
        (snapshot / p.name).write_bytes(p.read_bytes())
    return cache


def test_hub_ids_load_offline_from_the_cache(trained, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    checkpoint, images = trained
    folder = famix.save_pretrained(checkpoint, tmp_path / "shared")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache(tmp_path, folder, "owner/name")))
    assert constants.HF_HUB_OFFLINE  # conftest: HF_HUB_OFFLINE=1, no network
    model = famix.load("hf:owner/name", device="cpu")
    reference = famix.load(checkpoint, device="cpu")
    image = np.array(Image.open(images[0]))
    assert np.array_equal(model.predict(image), reference.predict(image))
    monkeypatch.chdir(tmp_path)
    main(["eval", "hf:owner/name", "--data", "synthetic:night:2:3:size=48", "--workers", "0"])
    assert (tmp_path / "owner--name.eval.synthetic-night-2-3-size=48.json").is_file()
    main(["predict", "hf:owner/name", str(images[0]), "--out", "p"])
    assert (tmp_path / "p" / "im0_color.png").is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["eval", "hf:owner/missing", "--data", "synthetic:night:2"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hf:owner/missing is not in the Hugging Face cache" in err
    assert "HF_HUB_OFFLINE" in err


def test_push_uploads_the_saved_folder(trained, tmp_path, monkeypatch, capsys):
    checkpoint, _ = trained
    uploaded = {}

    def upload(folder, repo, private=False, revision=None):
        uploaded.update(repo=repo, private=private, files=sorted(p.name for p in Path(folder).iterdir()))
        uploaded["card"] = (Path(folder) / "README.md").read_text()  # written for the repo it goes to
        return f"https://huggingface.co/{repo}"

    monkeypatch.setattr(hub, "upload", upload)
    main(["push", str(checkpoint), "owner/tiny", "--private"])
    assert 'famix.load("hf:owner/tiny")' in uploaded.pop("card")
    assert uploaded == {
        "repo": "owner/tiny",
        "private": True,
        "files": ["README.md", "config.json", "model.safetensors"],
    }
    assert "https://huggingface.co/owner/tiny" in capsys.readouterr().out
    # a loaded (perhaps changed) model pushes itself, from Python, as famix.push of it does
    model = famix.load(checkpoint)
    uploaded.clear()
    assert model.push_to_hub("owner/loaded") == "https://huggingface.co/owner/loaded"
    assert uploaded["repo"] == "owner/loaded" and 'famix.load("hf:owner/loaded")' in uploaded["card"]
    assert uploaded["files"] == ["README.md", "config.json", "model.safetensors"]
    assert famix.push(model, "owner/again", private=True) == "https://huggingface.co/owner/again"
    assert uploaded["private"] is True


def test_bad_sources_and_images(trained, tmp_path, capsys):
    checkpoint, images = trained
    err = one_line(capsys, "eval", tmp_path / "nowhere.pt", "--data", "synthetic:day:2")
    assert "nowhere.pt not found" in err and "famix save" in err and "hf:OWNER/NAME" in err
    assert "not a Hub model id" in one_line(capsys, "eval", "hf:no slash", "--data", "synthetic:day:2")
    (tmp_path / "empty").mkdir()
    assert "without config.json" in one_line(capsys, "eval", tmp_path / "empty", "--data", "synthetic:day:2")
    folder = famix.save_pretrained(checkpoint, tmp_path / "future")
    config = json.loads((folder / "config.json").read_text())
    config["famix"]["version"] = "7.0.0"
    (folder / "config.json").write_text(json.dumps(config))
    err = one_line(capsys, "predict", folder, str(images[0]), "--out", tmp_path / "p")
    assert "written by famix 7.0.0, another major version" in err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    err = one_line(capsys, "save", checkpoint, tmp_path / "notes")
    assert (
        "not empty and was not written by `famix save`" in err
        and (tmp_path / "notes" / "a.txt").read_text() == "mine"
    )
    err = one_line(capsys, "save", checkpoint, tmp_path / "b", "--bank")
    assert "trained without a style bank" in err
    model = famix.load(checkpoint, device="cpu")
    with pytest.raises(
        ValueError, match=r"image has shape \(2, 8, 8\): expected an image with 1, 3 or 4 channels"
    ):
        model.predict(torch.zeros(2, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="image 1 is torch.float32, expected uint8"):
        model.predict([images[0], torch.zeros(3, 8, 8)])
    with pytest.raises(ValueError, match="a numpy array of arrays .*pass a list"):
        model.predict(np.array([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], dtype=object))
    with pytest.raises(TypeError, match="the image is a dict: pass a file path"):
        model.predict({"a": 1})
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        model.predict(tmp_path / "nowhere.png")


def test_the_public_surface_is_small_and_lazy():
    import subprocess
    import sys

    code = "import sys, famix; print(sorted(famix.__all__)); print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    surface = ["__version__", "Config", "load_config", "Segmenter", "load", "save_pretrained", "push"]
    surface += ["mine", "train", "evaluate", "adapt", "benchmark", "report", "demo_config", "app", "diagnose"]
    assert eval(out[0]) == sorted(surface) and out[1] == "False"
    assert all(getattr(famix, name) is not None for name in famix.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        famix.nothing  # noqa: B018


def test_quickstart_notebook_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # No clock: a cell runs as long as it needs (timeout=None), however loaded the machine; the kernel's start
    # and a cell's last outputs get far longer than nbclient's 60 s and 4 s defaults (a busy machine is slow).
    client = nbclient.NotebookClient(
        notebook,
        timeout=None,
        startup_timeout=3600,
        iopub_timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "styles mined; 150 steps trained" in outputs and "famix.Segmenter(tiny-clip" in outputs
    assert "['README.md', 'config.json', 'model.safetensors']" in outputs
    assert any(
        o.output_type == "display_data" for c in notebook.cells if c.cell_type == "code" for o in c.outputs
    )


def test_save_includes_the_bank_the_model_was_trained_with(tmp_path):
    bank, out = tmp_path / "bank.safetensors", tmp_path / "run"
    overrides = ["data.train=synthetic:day:8:size=48", "data.val=[]", "data.crop=32", "mine.crop=32"]
    overrides += [
        f"style.bank={bank}",
        "mine.steps=1",
        "mine.max_images=4",
        f"train.out={out}",
        "train.iterations=2",
    ]
    main(["mine", "-c", "tiny", *overrides])
    main(["train", "-c", "tiny", *overrides])
    main(["save", str(out / "latest.pt"), str(tmp_path / "shared"), "--bank"])
    assert (tmp_path / "shared" / "bank.safetensors").read_bytes() == bank.read_bytes()
    assert "style bank included: `bank.safetensors`" in (tmp_path / "shared" / "README.md").read_text()
    other = tmp_path / "other.safetensors"
    main(["mine", "-c", "tiny", *overrides, f"style.bank={other}", "mine.steps=2"])
    with pytest.raises(SystemExit):
        main(["save", str(out / "latest.pt"), str(tmp_path / "s2"), "--bank", str(other)])
    assert not (tmp_path / "s2").exists()


def test_test_time_settings_are_one_value(trained):
    checkpoint, images = trained
    model = famix.load(checkpoint, device="cpu")
    tta = InferenceSettings(scale=0.5, flip=True)
    assert np.array_equal(model.predict(images[0], tta=tta), model.predict(images[0], scale=0.5, flip=True))
    assert torch.equal(
        model.predict_logits(images[0], tta=tta), model.predict_logits(images[0], scale=0.5, flip=True)
    )
    with pytest.raises(TypeError, match="not both"):
        model.predict(images[0], tta=tta, scale=0.5)
    with pytest.raises(TypeError, match=r"unknown test-time option\(s\) \['scael'\]"):
        model.predict(images[0], scael=0.5)


def test_evaluate_of_a_loaded_model_goes_through_the_stage(trained):
    checkpoint, _ = trained
    model = famix.load(checkpoint, device="cpu")
    spec = "synthetic:day:4:7:size=48"
    by_path = famix.evaluate(checkpoint, [spec], progress=False)[spec]
    loaded = famix.evaluate(model, [spec], progress=False)[spec]
    assert loaded.miou == by_path.miou and loaded.per_class_iou == by_path.per_class_iou
    cache = checkpoint.with_name(f"{checkpoint.stem}.eval-cache.json")
    entries = json.loads(cache.read_text())
    ours = [e for e in entries.values() if e["run"]["inputs"]["checkpoint"].startswith("state-sha256:")]
    assert len(ours) == 1 and ours[0]["result"]["miou"] == loaded.miou
    with pytest.raises((FileNotFoundError, ValueError), match="nowhere"):  # checked before any work
        famix.evaluate(model, ["cityscapes:/nowhere/cityscapes:val"], progress=False)
    with torch.no_grad():  # a changed model is another run: evaluated anew, its own entry
        model.network.classifier.classifier[-1].bias.add_(torch.arange(19.0))
    changed = famix.evaluate(model, [spec], progress=False)[spec]
    assert len(json.loads(cache.read_text())) == len(entries) + 1 and changed.miou != loaded.miou


def test_save_keeps_a_hand_edited_card_and_finishes_a_killed_save(trained, tmp_path, capsys):
    checkpoint, _ = trained
    folder = tmp_path / "shared"
    main(["save", str(checkpoint), str(folder)])
    card = (folder / "README.md").read_bytes()
    main(["save", str(checkpoint), str(folder)])  # its own earlier save, untouched: written again
    assert (folder / "README.md").read_bytes() == card
    (folder / "README.md").write_text("# My model\n\nNotes I wrote by hand.\n")
    err = one_line(capsys, "save", checkpoint, folder)
    assert err == (
        f"famix save: error: {folder / 'README.md'} was edited since `famix save` wrote it: famix does not "
        "replace it. Move it away (your text is kept), or pass --force to replace it"
    )
    assert (folder / "README.md").read_text() == "# My model\n\nNotes I wrote by hand.\n"
    main(["save", str(checkpoint), str(folder), "--force"])
    assert (folder / "README.md").read_bytes() == card
    killed = tmp_path / "killed"  # a save killed while writing its weights: a hidden temporary file only
    killed.mkdir()
    (killed / ".model.safetensors.x1y2.tmp").write_bytes(b"half the weights")
    main(["save", str(checkpoint), str(killed)])
    assert sorted(p.name for p in killed.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (killed / "README.md").read_bytes() == card.replace(b"shared", b"killed")


def test_the_object_evaluates_exports_and_loads_by_huggingfaces_name(trained, tmp_path):
    checkpoint, images = trained
    model = famix.Segmenter.from_pretrained(checkpoint, device="cpu")
    assert (model.predict(images[0]) == famix.load(checkpoint, device="cpu").predict(images[0])).all()
    data = "synthetic:night:2:3:size=48"
    by_object = model.evaluate(data, progress=False)[data]
    by_function = famix.evaluate(checkpoint, [data], progress=False)[data]
    assert by_object.miou == by_function.miou and by_object.confusion == by_function.confusion
    # the pixels-to-classes graph of the object equals its own predictions, in bare onnxruntime
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = model.export(tmp_path / "m.ids.onnx", size="48x48", graph="ids", dynamic=True)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for path in images[:2]:
        pixels = np.asarray(Image.open(path).convert("RGB"))[None]  # [1, H, W, 3]
        np.testing.assert_array_equal(session.run(None, {"images": pixels})[0][0], model.predict(path))
    with pytest.raises(ValueError, match="int8 calibrates on the source data"):
        model.export(tmp_path / "q.onnx", size="48x48", int8=True)
    model.source = None
    with pytest.raises(ValueError, match="not loaded from a file"):
        model.benchmark(data)
