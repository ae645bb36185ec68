"""`famix reproduce` end to end on fake datasets in the six layouts: the table beside the paper's numbers,
resuming without redoing finished stages, refusing other settings."""

import json
from pathlib import Path

import pytest

from famix.cli import main
from famix.engine import reproduce as reproduce_module
from tests import fake_datasets as fake

TINY = str(Path(__file__).resolve().parents[1] / "src" / "famix" / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    fake.gta5(root / "gta5", 4)
    fake.cityscapes(root / "cityscapes", {"val": {"lindau": 1}})
    fake.bdd(root / "bdd100k", 1)
    fake.mapillary(root / "mapillary", [(40, 56)])
    fake.synthia(root / "synthia", {"val": 1})
    for condition in ("night", "snow", "rain", "fog"):
        fake.acdc(root / "acdc", condition, "val", 1)
    return root


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    targets = [  # the paper's columns, with the protocol's sizes shrunk for tiny images
        f"cityscapes:{root}/cityscapes:val",
        f"bdd100k:{root}/bdd100k:val",
        f"mapillary:{root}/mapillary:validation:size=48",
        f"synthia:{root}/synthia:val",
        *(f"acdc:{c}:{root}/acdc:val" for c in ("night", "snow", "rain")),
        f"acdc:fog:{root}/acdc:val:fog_size=none",
    ]
    overrides = [
        "data.train=gta5:data/gta5", "data.val=[]", "data.crop=32", "data.batch_size=2",
        "mine.crop=32", "mine.batch_size=2", "mine.steps=1", "mine.max_images=2",
        "train.iterations=2", "train.val_interval=2", *extra,
    ]  # fmt: skip
    return ["reproduce", "-c", TINY, *overrides, "--data-root", str(root),
            "--seeds", "2", "--out", str(out), "--targets", *targets]  # fmt: skip


def test_reproduce_table_resume_and_refusal(data_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "repro"
    real_train, trained = reproduce_module.train, []

    def interrupted_train(cfg):  # the second seed's training is killed
        trained.append(cfg.run.seed)
        if len(trained) == 2:
            raise KeyboardInterrupt
        return real_train(cfg)

    monkeypatch.setattr(reproduce_module, "train", interrupted_train)
    with pytest.raises(KeyboardInterrupt):
        main(_args(data_root, out))
    seed0 = out / "seed0" / "latest.pt"
    stamp = seed0.stat().st_mtime_ns
    assert (out / "seed0" / "reproduce_eval.json").is_file() and not (out / "results.md").exists()

    trained.clear()
    monkeypatch.setattr(
        reproduce_module, "train", lambda cfg: (trained.append(cfg.run.seed), real_train(cfg))
    )
    main(_args(data_root, out))
    assert trained == [1] and seed0.stat().st_mtime_ns == stamp  # seed 0 neither retrained nor redone
    printed = capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())
    columns = result["columns"]
    assert list(columns) == ["C", "B", "M", "S", "ACDC night", "snow", "rain", "fog"]
    for name, col in columns.items():
        assert len(col["seeds"]) == 2 and col["mean"] == pytest.approx(sum(col["seeds"]) / 2)
        assert col["paper"] == reproduce_module.PAPER[("gta5", "RN50")][name]
        assert col["difference"] == pytest.approx(col["mean"] - col["paper"])
        assert set(col["per_class_iou"]) >= {"road", "bicycle"}
    table = (out / "results.md").read_text()
    assert "| paper (gta5 RN50) | 48.15 | 45.61 | 52.11 | 34.23 | 14.96 | 37.09 | 38.66 | 40.25 |" in table
    assert table.strip() in printed

    with pytest.raises(SystemExit):  # the same folder with other settings is refused
        main(_args(data_root, out, "train.lr=0.2"))
    assert "train.lr: 0.05 -> 0.2" in capsys.readouterr().err


def test_dry_run_lists_stages_data_and_estimate(data_root, tmp_path, capsys):
    main([*_args(data_root, tmp_path / "r"), "--dry-run"])
    text = capsys.readouterr().out
    assert "1. mine" in text and "2. train seed 1" in text and "3. evaluate seed 0: to do" in text
    assert f"gta5:{data_root}/gta5: ok" in text and "Estimate" in text
    assert not (tmp_path / "r").exists()  # a dry run writes nothing
