"""The run record (engine/runs.py): what decides a result, compared key by key; cached results keyed by it."""

import json

import pytest

from famix.engine.runs import RunRecord, cached, check_same


def record(**changes):
    settings = {"train": {"lr": 0.1, "iterations": 10}, "model": {"backbone": "RN50"}}
    inputs = {"bank": "sha256:aaaa", "clip weights": "random"}
    for key, value in changes.items():
        section, name = key.split("__")
        (inputs if section == "inputs" else settings[section])[name] = value
    return RunRecord("train", settings, inputs)


def test_changes_name_every_changed_setting_and_input():
    stored = record().to_dict()
    assert record().changes(stored) == []
    changed = record(train__lr=0.2, inputs__bank="sha256:bbbb").changes(stored)
    assert changed == ["input bank: 'sha256:aaaa' -> 'sha256:bbbb'", "train.lr: 0.1 -> 0.2"]
    assert RunRecord("mine", stored["settings"], stored["inputs"]).changes(stored) == [
        "kind: 'train' -> 'mine'"
    ]
    fewer = RunRecord("train", {"train": {"lr": 0.1}}, stored["inputs"])
    assert fewer.changes(stored) == [
        "model.backbone: 'RN50' -> '(unset)'",
        "train.iterations: 10 -> '(unset)'",
    ]


def test_check_same_refuses_naming_the_keys_and_the_fix(tmp_path):
    check_same(record(), record().to_dict(), tmp_path / "latest.pt", "pass another train.out")
    with pytest.raises(
        FileExistsError, match=r"latest.pt holds a run made with other settings: train.lr: 0.1 -> 0.3\. pass"
    ):
        check_same(
            record(train__lr=0.3), record().to_dict(), tmp_path / "latest.pt", "pass another train.out"
        )
    with pytest.raises(FileExistsError, match="has no run record"):
        check_same(record(), None, tmp_path / "old.pt", "pass another train.out")


def test_cached_results_are_keyed_by_the_record(tmp_path):
    path, calls, said = tmp_path / "cache.json", [], []

    def compute(value):
        def run():
            calls.append(value)
            return {"miou": value}

        return run

    assert cached(path, record(), compute(1.0), said.append) == {"miou": 1.0}
    assert cached(path, record(), compute(2.0), said.append) == {"miou": 1.0}  # reused, not recomputed
    assert cached(path, record(train__lr=0.5), compute(3.0), said.append) == {"miou": 3.0}  # its own entry
    assert cached(path, record(), compute(4.0), said.append) == {"miou": 1.0}  # the first kept
    assert calls == [1.0, 3.0] and len(said) == 2 and str(path) in said[0]
    entries = json.loads(path.read_text())
    assert sorted(e["run"]["settings"]["train"]["lr"] for e in entries.values()) == [0.1, 0.5]
    assert cached(tmp_path / "other.json", record(), compute(5.0), write=False) == {"miou": 5.0}
    assert not (tmp_path / "other.json").exists()


def test_a_training_record_holds_the_result_keys_only(tmp_path):
    from famix.config import load_config
    from famix.stages.train import train_record

    base = train_record(load_config("tiny", ["style.mix=none"]))
    neutral = ["train.log_interval=1", "train.val_interval=3", "train.ckpt_interval=2", "data.workers=2",
               "run.device=cpu", "train.stop_after=5", "data.val=[]", f"train.out={tmp_path}"]  # fmt: skip
    assert train_record(load_config("tiny", ["style.mix=none", *neutral])).changes(base.to_dict()) == []
    other = train_record(load_config("tiny", ["style.mix=mixstyle", "train.lr=0.01"]))
    assert other.changes(base.to_dict()) == ["style.mix: 'none' -> 'mixstyle'", "train.lr: 0.05 -> 0.01"]
