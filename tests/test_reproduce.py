"""`famix reproduce` end to end on fake datasets in the six layouts: the table beside the paper's numbers,
resuming without redoing finished stages, refusing other settings."""

import json
from pathlib import Path

import pytest

from famix.cli import main
from famix.stages import reproduce as reproduce_module
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
    loop = reproduce_module.train  # the train stage; its .train is the training loop it runs
    real_train, trained = loop.train, []

    def interrupted_train(cfg, *args, **kw):  # the second seed's training is killed
        trained.append(cfg.run.seed)
        if len(trained) == 2:
            raise KeyboardInterrupt
        return real_train(cfg, *args, **kw)

    monkeypatch.setattr(loop, "train", interrupted_train)
    with pytest.raises(SystemExit) as stopped:  # Ctrl-C: one line, exit status 130
        main(_args(data_root, out))
    assert stopped.value.code == 130
    seed0 = out / "seed0" / "latest.pt"
    stamp = seed0.stat().st_mtime_ns
    assert (out / "seed0" / "latest.eval-cache.json").is_file() and not (out / "results.md").exists()

    trained.clear()

    def counted_train(cfg, *args, **kw):
        trained.append(cfg.run.seed)
        return real_train(cfg, *args, **kw)

    monkeypatch.setattr(loop, "train", counted_train)
    main(_args(data_root, out))
    assert trained == [1] and seed0.stat().st_mtime_ns == stamp  # seed 0 neither retrained nor redone
    printed = capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())
    columns = result["columns"]
    assert list(columns) == ["C", "B", "M", "S", "ACDC night", "snow", "rain", "fog"]
    for col in columns.values():
        assert len(col["seeds"]) == 2 and col["mean"] == pytest.approx(sum(col["seeds"]) / 2)
        assert col["paper"] is None and col["difference"] is None  # tiny-rn has no row in the paper
        assert set(col["per_class_iou"]) >= {"road", "bicycle"}
    # the table's precision is the one every seed's evaluation used and recorded (the CPU: autocast off)
    caches = [json.loads((out / f"seed{s}" / "latest.eval-cache.json").read_text()) for s in (0, 1)]
    assert {e["run"]["settings"]["amp"] for c in caches for e in c.values()} == {result["amp"]} == {"off"}
    table = (out / "results.md").read_text()
    assert "| paper" not in table and "difference" not in table
    assert table.strip() in printed

    with pytest.raises(SystemExit):  # the same folder with other settings is refused
        main(_args(data_root, out, "train.lr=0.2"))
    assert "train.lr: 0.05 -> 0.2" in capsys.readouterr().err
    trained.clear()
    main(_args(data_root, out, "train.log_interval=1", "mine.save_every=5", "data.workers=0"))  # neutral
    assert trained == [] and seed0.stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text())["columns"] == columns


def test_dry_run_lists_stages_data_and_estimate(data_root, tmp_path, capsys):
    main([*_args(data_root, tmp_path / "r"), "--dry-run"])
    text = capsys.readouterr().out
    assert "1. mine" in text and "2. train seed 1" in text and "3. evaluate seed 0: to do" in text
    assert f"gta5:{data_root}/gta5: ok" in text and "Estimate" in text
    assert not (tmp_path / "r").exists()  # a dry run writes nothing


def test_targets_change_in_place_with_splits_as_columns_and_unlabelled_targets(
    data_root, tmp_path, monkeypatch
):
    """--targets is an evaluation input: changing it keeps the bank and the models; two splits of one
    benchmark are two columns; a target with no labelled pixel is reported and the table still written;
    --bank is used and the config's style.bank is never written."""
    empty = tmp_path / "unlabelled"  # a BDD100K layout whose only mask is all ignore (255)
    fake.write_image(empty / "images" / "val" / "a.jpg", 1)
    fake.write_grey(empty / "labels" / "val" / "a.png", fake.raster([255]))
    fake.cityscapes(data_root / "cityscapes", {"train": {"aachen": 1}})
    monkeypatch.chdir(tmp_path)
    out, bank = tmp_path / "repro", tmp_path / "my_bank.safetensors"
    val = f"cityscapes:{data_root}/cityscapes:val"

    def args(*targets):
        return [*_args(data_root, out)[: _args(data_root, out).index("--seeds")], "--seeds", "1", "--out",
                str(out), "--bank", str(bank), "--targets", *targets]  # fmt: skip

    main(args(val))
    stamps = {p: p.stat().st_mtime_ns for p in (bank, out / "seed0" / "latest.pt")}
    monkeypatch.setattr(reproduce_module.train, "train", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr(reproduce_module.mine, "mine_pass", lambda *a, **k: pytest.fail("mined again"))
    main(args(val, f"cityscapes:{data_root}/cityscapes:train", f"bdd100k:{empty}:val"))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    columns = json.loads((out / "results.json").read_text())["columns"]
    assert list(columns) == ["C", "C (train)", "B"]
    assert columns["C (train)"]["spec"] == f"cityscapes:{data_root}/cityscapes:train"
    assert columns["B"]["mean"] is None and "no labelled pixel" in columns["B"]["note"]
    assert "| no labels |" in (out / "results.md").read_text()
    assert not (tmp_path / "runs").exists()  # the preset's style.bank (runs/tiny/...) was not touched


def test_paper_numbers_only_beside_their_own_backbone():
    from famix.config import Config
    from famix.engine.evaluate import EvalResult

    result = EvalResult(miou=40.0, per_class_iou=[None] * 19, confusion=[], num_images=1)
    runs = {0: {"cityscapes:d:val": result}}
    cfg = Config()
    cfg.data.train = "gta5:data/gta5"
    table = reproduce_module.summarise(runs, cfg)
    assert table["columns"]["C"]["paper"] == 48.15 and table["columns"]["C"]["difference"] == pytest.approx(
        -8.15
    )
    cfg.model.backbone = "ViT-B-16"
    table = reproduce_module.summarise(runs, cfg)
    assert table["columns"]["C"]["paper"] is None and "difference" not in table["table"]


def test_another_runs_seed_folder_is_refused_before_any_training(data_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "repro"
    one_seed = _args(data_root, out)
    one_seed[one_seed.index("--seeds") + 1] = "1"
    main(one_seed)
    (out / "seed0").rename(out / "seed1")  # seed 1's folder now holds seed 0's run
    monkeypatch.setattr(
        reproduce_module.train, "train", lambda *a, **k: pytest.fail("trained before refusing")
    )
    with pytest.raises(SystemExit):
        main(_args(data_root, out))  # seeds 0 and 1
    err = capsys.readouterr().err
    assert "seed1/latest.pt holds a run made with other settings: run.seed: 0 -> 1" in err and "--out" in err
    assert not (out / "seed0").exists()
