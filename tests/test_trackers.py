"""Training you can watch: one printed line per validation dataset, and the trackers of ``run.loggers``
(wandb in its offline mode, MLflow's local file store: the real libraries), read back after the run."""

import importlib.util
import io
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from famix.cli import main
from famix.config import load_config
from famix.engine.loggers import dataset_name, scalars
from famix.stages import train

VAL = ["synthetic:day:4:99:size=64", "synthetic:night:4:98:size=64"]


def _overrides(out) -> list[str]:
    return [
        "data.train=synthetic:day:16:size=64",
        f"data.val=[{','.join(VAL)}]",
        "style.mix=none",
        "train.iterations=4",
        "train.val_interval=2",
        "train.log_interval=2",
        f"train.out={out}",
    ]


def _cfg(tmp_path, loggers: str):
    return load_config("tiny", [*_overrides(tmp_path / "run"), f"run.loggers={loggers}"])


def test_scalars_are_flat_with_one_name_per_dataset():
    record = {"step": 3, "loss": 1.5, "val_miou": {"cityscapes:/data/cs:val": 40.0, VAL[1]: 20.5}, "x": "a"}
    assert scalars(record) == {
        "loss": 1.5,
        "val_miou/cityscapes-val": 40.0,
        "val_miou/synthetic-night-4-98-size-64": 20.5,
    }
    assert dataset_name("acdc:night:/data/acdc:val") == "acdc-night-val"


@pytest.mark.skipif(
    not (importlib.util.find_spec("wandb") and importlib.util.find_spec("mlflow")),
    reason="wandb and mlflow are test extras (pip install -e '.[dev]')",
)
def test_wandb_offline_and_mlflow_file_store_hold_each_datasets_validation(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    store = (tmp_path / "mlruns").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this
    cfg = _cfg(tmp_path, "[wandb,mlflow]")
    train.run(cfg)
    printed = capsys.readouterr()
    lines = [line for line in (printed.out + printed.err).splitlines() if line.startswith("step ")]
    for step in (2, 4):
        for spec in VAL:
            assert any(line.startswith(f"step {step}: {dataset_name(spec)}: mIoU ") for line in lines), lines
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    validations = {r["step"]: r["val_miou"] for r in logged if "val_miou" in r}
    assert sorted(validations) == [2, 4]

    # wandb (offline): its run file holds every validation step of every dataset, and the config
    (run_file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    history, config = _wandb_records(run_file)
    for spec in VAL:
        got = {
            step: row[f"val_miou/{dataset_name(spec)}"]
            for step, row in history.items()
            if "val_mean_miou" in row
        }
        assert got == pytest.approx({s: v[spec] for s, v in validations.items()}, abs=1e-9)
    assert config["train.iterations"] == 4 and config["style.mix"] == "none"

    # MLflow (file store): every validation step of every dataset, and the config as parameters
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "famix"]
    (run,) = client.search_runs([experiment.experiment_id])
    for spec in VAL:
        history = client.get_metric_history(run.info.run_id, f"val_miou/{dataset_name(spec)}")
        got = {m.step: m.value for m in history}
        assert got == pytest.approx({s: v[spec] for s, v in validations.items()}, abs=1e-9)
    assert run.data.params["train.iterations"] == "4" and run.data.params["style.mix"] == "none"


def _wandb_records(path) -> tuple[dict[int, dict], dict]:
    """({step: {scalar: value}}, config) of a wandb run file, read as wandb writes it: a 7-byte header
    (":W&B", magic, version), then LevelDB-log records (4-byte checksum, 2-byte length, 1-byte type: full,
    first, middle, last) in 32 KiB blocks, each a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, chunks, history, config = path.read_bytes(), 32768, 7, b"", {}, {}
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            if record.WhichOneof("record_type") == "history":
                items = {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item
                }
                history[items["_step"]] = items
            elif record.WhichOneof("record_type") in ("run", "config"):  # init's config, later updates
                updates = record.run.config.update if record.HasField("run") else record.config.update
                config.update({i.key: json.loads(i.value_json) for i in updates})
    return history, config


def test_unknown_tracker_is_one_line_before_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "-c", "tiny", f"train.out={tmp_path / 'run'}", "run.loggers=[wandb,comet]"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert "run.loggers: unknown ['comet']; choose from tensorboard, wandb, mlflow" in err
    assert not (tmp_path / "run").exists()


def test_a_tracker_asked_for_and_missing_is_said_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as without the tensorboard package
    with pytest.warns(UserWarning, match=r"run.loggers: tensorboard is not installed \(pip install") as said:
        train.run(_cfg(tmp_path, "[tensorboard]"))
    assert len([w for w in said if "tensorboard is not installed" in str(w.message)]) == 1
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is a test extra")
def test_tensorboard_holds_every_scalar_and_the_predictions_with_their_legends(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from famix.engine.checkpoint import load_segmenter
    from famix.engine.inference import eval_mode, predict_ids
    from famix.engine.visualize import overlay
    from famix.world.synthetic import SyntheticDataset

    cfg = _cfg(tmp_path, "[tensorboard]")
    train.run(cfg)
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0})
    events.Reload()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for spec in VAL:
        got = {e.step: e.value for e in events.Scalars(f"val_miou/{dataset_name(spec)}")}
        want = {r["step"]: r["val_miou"][spec] for r in logged if "val_miou" in r}
        assert got == pytest.approx(want, rel=1e-6)  # TensorBoard stores float32
    assert {"loss", "lr", "val_mean_miou"} <= set(events.Tags()["scalars"])
    # the last validation's first day image: the final model's prediction over it, the legend below
    (last,) = [e for e in events.Images(f"val/{dataset_name(VAL[0])}/0") if e.step == 4]
    picture = np.asarray(Image.open(io.BytesIO(last.encoded_image_string)).convert("RGB"))
    model, model_cfg = load_segmenter(tmp_path / "run" / "latest.pt", channels_last=True)
    image = SyntheticDataset("day", 4, size=(64, 64), seed=99)[0][0]  # VAL[0]'s first scene
    with eval_mode(model), torch.inference_mode():
        ids = predict_ids(model, image[None])[0]
    expected = overlay(image, ids, colours=model_cfg.labels.palette(), num_classes=len(model_cfg.labels))
    assert picture.shape[1] == 64 and picture.shape[0] > 64  # the legend strip below the 64 px scene
    assert (picture[:64] == expected).all(axis=-1).mean() >= 0.999


def test_training_ends_with_its_report_page_and_keeps_a_foreign_one(tmp_path, capsys):
    from famix.stages import report

    cfg = _cfg(tmp_path, "[]")
    train.run(cfg)
    page = tmp_path / "run" / "report.html"
    assert page.is_file() and report.MARK in page.read_text()
    assert f"famix train: report written to {page}" in capsys.readouterr().out
    other = load_config("tiny", [*_overrides(tmp_path / "other")])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "report.html").write_text("my page")
    result = train.run(other)  # trained and saved; the page that is not famix's is kept, and said
    assert result["step"] == 4 and (tmp_path / "other" / "best.pt").is_file()
    assert (tmp_path / "other" / "report.html").read_text() == "my page"
    assert "famix train: no report page:" in capsys.readouterr().out
