"""Every stage owns its run: run twice with the same settings and the second is a no-op that returns the
same result (and says so); one changed result-deciding key is refused naming that key; a changed neutral key
(log interval, save interval, workers, device, batch size) is accepted."""

from pathlib import Path

import pytest

from famix.config import load_config
from famix.data.trainids import CLASS_NAMES
from famix.engine.runs import State, Status
from famix.io import file_fingerprint
from famix.settings import EvalSettings, ExportSettings, InferenceSettings, PredictSettings
from famix.stages import adapt, evaluate, mine, train

TINY = "tiny"
FAST = ["data.val=[]", "data.train=synthetic:day:8:size=48", "data.crop=32", "mine.crop=32"]


def stamps(folder: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()}


def test_mine_stage_owns_its_bank(tmp_path):
    bank, said = tmp_path / "bank.safetensors", []

    def cfg(*extra):
        return load_config(TINY, [*FAST, f"style.bank={bank}", "mine.steps=1", "mine.max_images=4", *extra])

    first = mine.run(cfg(), progress=False, say=said.append)
    before = stamps(tmp_path)
    again = mine.run(
        cfg("mine.save_every=3", "run.device=cpu", "data.workers=0"), progress=False, say=said.append
    )
    assert (
        stamps(tmp_path) == before and again.counts() == first.counts() and again.metadata == first.metadata
    )
    assert said and "finished" in said[-1] and "nothing to do" in said[-1]
    with pytest.raises(FileExistsError, match=r"mine.momentum: 0.9 -> 0.5\. Pass another style.bank"):
        mine.run(cfg("mine.momentum=0.5"), progress=False)
    assert stamps(tmp_path) == before
    assert mine.status(cfg()) == Status(State.DONE)
    assert mine.status(cfg("mine.max_images=8")) == Status(State.RESUME, "after 1 of 2 batches")


def test_train_stage_owns_its_run_folder(tmp_path):
    out, said = tmp_path / "run", []

    def cfg(*extra):
        return load_config(
            TINY, [*FAST, f"train.out={out}", "train.iterations=2", "style.mix=mixstyle", *extra]
        )

    first = train.run(cfg())
    before = stamps(out)
    neutral = (
        "train.log_interval=1",
        "train.ckpt_interval=7",
        "data.workers=0",
        "run.device=cpu",
        "train.val_interval=5",
    )
    assert train.run(cfg(*neutral), say=said.append) == first
    assert stamps(out) == before  # nothing rewritten, config.yaml included
    assert said == [f"famix train: {out} holds this run, finished at step 2: nothing to do"]
    with pytest.raises(FileExistsError, match=r"train.lr: 0.05 -> 0.07\. Pass another train.out"):
        train.run(cfg("train.lr=0.07"))
    with pytest.raises(
        FileExistsError, match=r"data.train: 'synthetic:day:8:size=48' -> 'synthetic:day:9:size=48'"
    ):
        train.run(cfg("data.train=synthetic:day:9:size=48"))
    assert stamps(out) == before
    assert train.status(cfg()) == Status(State.DONE)
    half = tmp_path / "half"

    def stopped(*extra):
        return load_config(
            TINY, [*FAST, f"train.out={half}", "train.iterations=3", "style.mix=mixstyle", *extra]
        )

    train.run(stopped("train.stop_after=2"))
    assert train.status(stopped()) == Status(State.RESUME, "at step 2") and train.run(stopped())["step"] == 3
    assert (
        str(train.status(stopped())) == "done"
        and str(Status(State.RESUME, "at step 2")) == "resumes at step 2"
    )


def test_train_run_identity_is_the_bank_content_not_its_path(tmp_path):
    bank = tmp_path / "bank.safetensors"
    mine.run(
        load_config(TINY, [*FAST, f"style.bank={bank}", "mine.steps=1", "mine.max_images=4"]), progress=False
    )
    moved = tmp_path / "moved.safetensors"
    moved.write_bytes(bank.read_bytes())

    def cfg(b):
        return load_config(
            TINY, [*FAST, f"train.out={tmp_path / 'run'}", "train.iterations=1", f"style.bank={b}"]
        )

    first = train.run(cfg(bank))
    assert train.run(cfg(moved)) == first  # the same styles under another name: the same run
    other = tmp_path / "other.safetensors"
    mine.run(
        load_config(TINY, [*FAST, f"style.bank={other}", "mine.steps=2", "mine.max_images=4"]), progress=False
    )
    with pytest.raises(FileExistsError, match="input bank: 'sha256:"):
        train.run(cfg(other))


def test_evaluate_stage_caches_each_spec_by_what_decides_it(checkpoint, monkeypatch):
    specs, said = ["synthetic:day:2:5:size=32", "synthetic:fog:2:5:size=32"], []
    settings = EvalSettings(amp="off", device="cpu", batch_size=1)
    first, names = evaluate.run(checkpoint, specs, settings, progress=False)
    computed = []
    real = evaluate.evaluate_specs
    monkeypatch.setattr(evaluate, "evaluate_specs", lambda *a, **k: computed.append(a[1]) or real(*a, **k))
    neutral = EvalSettings(amp="off", device="cpu", batch_size=2, workers=0)
    again, _ = evaluate.run(checkpoint, specs, neutral, progress=False, say=said.append)
    assert computed == [] and again == first and len(said) == 3 and "reusing the cached result" in said[0]
    assert said[-1] == "protocol paper: full resolution (FAMix's protocol); test time: plain; precision: off"
    scaled = EvalSettings(InferenceSettings(scale=0.5), amp="off", device="cpu")
    evaluate.run(checkpoint, specs[:1], scaled, progress=False)
    assert computed == [specs[:1]]  # another test-time setting: its own result, not the cached one
    assert evaluate.is_cached(checkpoint, specs[0], scaled) and not evaluate.is_cached(
        checkpoint, "synthetic:day:3", settings
    )
    assert names == list(CLASS_NAMES)  # the checkpoint's own class list


def test_evaluate_checks_every_spec_before_the_first_is_evaluated(checkpoint, monkeypatch):
    monkeypatch.setattr(evaluate, "evaluate_specs", lambda *a, **k: pytest.fail("evaluated before checking"))
    with pytest.raises(ValueError, match="--data synthetic:nowhere:2: unknown synthetic domain"):
        evaluate.run(checkpoint, ["synthetic:day:2:size=32", "synthetic:nowhere:2"], progress=False)


SETTINGS = adapt.AdaptSettings(
    iterations=2, steps=1, images=4, crop=32, batch_size=2, device="cpu", ckpt_interval=2
)


def test_adapt_stage_owns_its_target_folders(checkpoint, tmp_path):
    source, said = "synthetic:day:4:0:size=48", []
    first = adapt.run(checkpoint, ["night"], source, tmp_path, settings=SETTINGS, progress=False)
    before = stamps(tmp_path / "night")
    neutral = adapt.AdaptSettings(**{**vars(SETTINGS), "ckpt_interval": 1, "save_every": 3, "workers": 0})
    assert (
        adapt.run(checkpoint, ["night"], source, tmp_path, settings=neutral, progress=False, say=said.append)
        == first
    )
    assert stamps(tmp_path / "night") == before and len(said) == 2 and "finished" in said[1]
    other = adapt.AdaptSettings(**{**vars(SETTINGS), "pin_lr": 0.5})
    with pytest.raises(FileExistsError, match=r"pin.lr: 1.0 -> 0.5\. Pass another --out"):
        adapt.run(checkpoint, ["night"], source, tmp_path, settings=other, progress=False)
    assert stamps(tmp_path / "night") == before


def test_predict_stage_writes_nothing_the_second_time(checkpoint, tmp_path):
    import numpy as np
    from PIL import Image

    from famix.stages import predict

    image = tmp_path / "street.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(image)
    out, said = tmp_path / "out", []
    cpu = PredictSettings(device="cpu")
    first = predict.run(checkpoint, [str(image)], out, cpu, progress=False)
    before = stamps(out)
    assert (
        predict.run(
            checkpoint, [str(image)], out, PredictSettings(device="cpu", batch_size=2), False, said.append
        )
        == first
    )
    assert stamps(out) == before and "nothing to do" in said[0]
    first[0].unlink()  # a file of the run is gone: predicted again
    assert predict.run(checkpoint, [str(image)], out, cpu, progress=False) == first and first[0].is_file()
    Image.fromarray(np.zeros((32, 48, 3), dtype=np.uint8)).save(image)  # another picture under the same name
    said.clear()
    predict.run(checkpoint, [str(image)], out, cpu, progress=False, say=said.append)
    assert said == []


def test_export_stage_writes_nothing_the_second_time(checkpoint, tmp_path):
    from famix.stages import export

    out, said = tmp_path / "model.torchscript.pt", []
    written, check = export.run(checkpoint, ExportSettings("torchscript", "32x32"), out=out)
    assert written == out and check is not None
    before = stamps(tmp_path)
    assert export.run(checkpoint, ExportSettings("torchscript", "32x32"), out=out, say=said.append) == (
        out,
        None,
    )
    assert stamps(tmp_path) == before and "nothing to do" in said[0]
    _, check = export.run(
        checkpoint, ExportSettings("torchscript", "32x48"), out=out
    )  # another size: exported again
    assert check is not None and check.shapes[0][-2:] == (32, 48)


def test_convert_stage_writes_nothing_the_second_time(tmp_path):
    import pickle

    import torch

    from famix.stages import convert

    raw = {"road_mu": [torch.full((64, 1, 1), 1.0)], "road_std": [torch.ones(64, 1, 1)]}
    src = tmp_path / "bank.pkl"
    src.write_bytes(pickle.dumps(raw))
    dst, said = tmp_path / "out" / "bank.safetensors", []
    convert.run("bank", src, dst, trust_pickle=True)
    before = stamps(dst.parent)
    assert convert.run("bank", src, dst, trust_pickle=True, say=said.append) == dst
    assert stamps(dst.parent) == before and "nothing to do" in said[0]
    raw["road_mu"] = [torch.full((64, 1, 1), 3.0)]  # another source: converted again
    src.write_bytes(pickle.dumps(raw))
    said.clear()
    convert.run("bank", src, dst, trust_pickle=True, say=said.append)
    assert said == [] and stamps(dst.parent) != before


def test_adapt_refuses_another_runs_target_folder_before_any_target(checkpoint, tmp_path):
    source = "synthetic:day:4:0:size=48"
    adapt.run(checkpoint, ["night"], source, tmp_path, settings=SETTINGS, progress=False)
    (tmp_path / "night").rename(tmp_path / "fog")  # the fog folder now holds the night run
    with pytest.raises(FileExistsError, match=r"target: 'night' -> 'fog'"):
        adapt.run(checkpoint, ["snow", "fog"], source, tmp_path, settings=SETTINGS, progress=False)
    assert not (tmp_path / "snow").exists()  # refused before the first target was mined


def test_convert_records_its_run_in_the_file_it_writes(tmp_path):
    import json

    import torch
    from safetensors import safe_open

    from famix.models.clip import build_clip
    from famix.stages import convert

    torch.save(build_clip("tiny-rn", seed=3).state_dict(), tmp_path / "w.pt")
    dst, said = tmp_path / "w.safetensors", []
    convert.run("clip", tmp_path / "w.pt", dst)
    with safe_open(str(dst), "pt") as f:
        stored = json.loads(f.metadata()["run"])
    assert stored == {
        "kind": "convert",
        "settings": {"kind": "clip"},
        "inputs": {"source": file_fingerprint(tmp_path / "w.pt")},
    }
    before = stamps(tmp_path)
    assert convert.run("clip", tmp_path / "w.pt", dst, say=said.append) == dst
    assert stamps(tmp_path) == before and said == [
        f"famix convert: {dst} holds this conversion of {tmp_path / 'w.pt'} already: nothing to do"
    ]
    torch.save(build_clip("tiny-rn", seed=4).state_dict(), tmp_path / "w.pt")  # another source: again
    said.clear()
    convert.run("clip", tmp_path / "w.pt", dst, say=said.append)
    assert said == [] and stamps(tmp_path) != before
