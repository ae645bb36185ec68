"""Bad inputs, tried as a new user would: each exits non-zero with one line that names the input and says what
to do (no traceback), before any work, and leaves every existing file byte-identical."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from famix.cli import main
from famix.config import ModelConfig
from famix.models.build import build_segmenter
from famix.style.bank import StyleBank
from tests import fake_datasets as fake
from tests.cli_errors import one_line

FAST = [
    "data.val=[]",
    "data.crop=32",
    "mine.crop=32",
    "train.iterations=2",
    "mine.steps=1",
    "mine.max_images=4",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory, checkpoint):
    """A user's folder: a checkpoint and a finished run, an adapt bank, fake benchmark data, a notes file."""
    root = tmp_path_factory.mktemp("user")
    run = root / "run"
    run.mkdir()
    (run / "latest.pt").write_bytes(checkpoint.read_bytes())
    (run / "best.pt").write_bytes(checkpoint.read_bytes())
    channels = build_segmenter(ModelConfig(backbone="tiny-rn"), seed=0).style_channels
    adapt_bank = StyleBank(
        list(ModelConfig().class_names), channels, metadata={"run": {"kind": "adapt-styles"}}
    )
    adapt_bank.save(root / "night.safetensors")
    (root / "list.yaml").write_text("- train: {lr: 0.1}\n")
    (root / "notes.txt").write_text("not a bank, not a checkpoint\n")
    (root / "empty").mkdir()  # a target folder with no image
    (root / "their-run").mkdir()
    (root / "their-run" / "metrics.jsonl").write_text("step,loss\n1,0.5\n")  # someone else's log
    for folder in ("their-repro/seed0", "their-adapt/night"):  # the same, where composites would train
        (root / folder).mkdir(parents=True)
        (root / folder / "metrics.jsonl").write_text("step,loss\n1,0.5\n")
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(root / "scripted.pt"))  # a TorchScript archive
    data = root / "data"
    fake.gta5(data / "gta5", 2)
    fake.cityscapes(data / "cityscapes", {"val": {"lindau": 1}, "train": {"aachen": 1}})
    fake.acdc(data / "acdc", "fog", "val", 1)  # not 1920x1080: the fog size filter drops it
    fake.cityscapes(data / "broken", {"val": {"ulm": 2}})
    image = next((data / "broken" / "leftImg8bit").rglob("*.png"))
    image.write_bytes(image.read_bytes()[:60])  # a truncated PNG, found only when decoded
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lone_rank(timeout: str) -> dict:
    """The environment of rank 0 of a 2-process torchrun whose other rank never comes."""
    return {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port()), "FAMIX_RENDEZVOUS_TIMEOUT": timeout}  # fmt: skip


def _rows(w: Path) -> list:
    """(id, argv, environment, what the one line must say)."""
    d, ckpt = w / "data", str(w / "run" / "best.pt")
    train = ["train", "-c", "tiny", f"train.out={w / 'new-run'}", *FAST]
    repro = ["reproduce", "-c", "tiny", *FAST, f"data.train=gta5:{d}/gta5", "--out", str(w / "repro")]
    adapt = ["adapt", ckpt, "--data", "synthetic:day:4:size=48", "--out", str(w / "adapted")]
    export = ["export", ckpt, "--format", "torchscript", "--size", "32", "--out"]
    return [
        (
            "export over a checkpoint",
            [*export, str(w / "run" / "latest.pt")],
            {},
            "--force",
        ),
        ("empty adapt target", [*adapt, "--target", ""], {}, "--target '' has no letter or digit"),
        (
            "punctuation adapt target",
            [*adapt, "--target", "!!!"],
            {},
            "--target '!!!' has no letter or digit",
        ),
        (
            "negative iterations",
            [*train, "train.iterations=-5"],
            {},
            "train.iterations=-5: give a number >= 1",
        ),
        ("two configs", [*train[:3], "-c", "tiny_vit", *train[3:]], {}, "-c given twice"),
        (
            "adapt bank as a FAMix bank",
            [*train, f"style.bank={w / 'night.safetensors'}"],
            {},
            "night.safetensors holds `famix adapt`'s image-level styles",
        ),
        ("dry run with problems", [*repro, "--targets", f"acdc:fog:{d}/acdc:val", "--dry-run"], {}, None),
        (
            "override after --targets",
            [*repro, "--targets", f"cityscapes:{d}/cityscapes:val", "train.lr=0.2"],
            {},
            "'train.lr=0.2' looks like a config override",
        ),
        (
            "target without a root",
            [*repro, "--targets", "cityscapes"],
            {},
            "--targets cityscapes: the spec names no dataset folder",
        ),
        (
            "data.val a number",
            [*train, "data.val: 5".replace(": ", "=")],
            {},
            "data.val 5: unknown dataset '5'",
        ),
        (
            "unknown val domain",
            [*train, "data.val=[synthetic:dusk2:4]"],
            {},
            "unknown synthetic domain 'dusk2'",
        ),
        ("zero seeds", [*repro, "--seeds", "0"], {}, "--seeds 0: give a number of training runs >= 1"),
        (
            "zero val interval",
            [*train, "train.val_interval=0"],
            {},
            "train.val_interval=0: give a number >= 1",
        ),
        (
            "zero mining grid",
            ["mine", "-c", "tiny", f"style.bank={w / 'b.safetensors'}", "mine.grid=0"],
            {},
            "mine.grid=0: give a number >= 1",
        ),
        (
            "a YAML list",
            ["train", "-c", str(w / "list.yaml")],
            {},
            "list.yaml: the top level must be a mapping",
        ),
        ("WORLD_SIZE without RANK", train, {"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but RANK is not"),
        ("RANK out of range", train, {"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is not in 0..1"),
        (
            "a lone rank",
            train,
            _lone_rank("2"),
            "did not join",
        ),
        (
            "convert a text file",
            ["convert", "bank", str(w / "notes.txt"), str(w / "bank.safetensors")],
            {},
            "notes.txt",
        ),
        (
            "eval with a bad second spec",
            ["eval", ckpt, "--data", "synthetic:day:2:size=32", "synthetic:nowhere:2", "--device", "cpu"],
            {},
            "--data synthetic:nowhere:2: unknown synthetic domain 'nowhere'",
        ),
        (
            "train.out under a file",
            ["train", "-c", "tiny", f"train.out={w / 'notes.txt' / 'run'}", *FAST],
            {},
            "notes.txt is a file, not a folder",
        ),
        (
            "eval on a TorchScript file",
            ["eval", str(w / "scripted.pt"), "--data", "synthetic:day:2"],
            {},
            "scripted.pt is a TorchScript model archive, not a checkpoint",
        ),
        (
            "export --out under a file",
            [*export, str(w / "notes.txt" / "m.pt")],
            {},
            "notes.txt is a file, not a folder",
        ),
        (
            "datasets check: a GTA5 split without its list",
            ["datasets", "check", f"gta5:{d}/gta5:train"],
            {},
            None,
        ),
        (
            "datasets check: fog emptied by its size filter",
            ["datasets", "check", f"acdc:fog:{d}/acdc:val"],
            {},
            None,
        ),
        ("datasets check: a truncated PNG", ["datasets", "check", f"cityscapes:{d}/broken:val"], {}, None),
        (
            "fog split emptied by the size filter",
            [*repro, "--targets", f"acdc:fog:{d}/acdc:val"],
            {},
            "fog_size=none",
        ),
        (
            "two targets in one column",
            [
                *repro,
                "--targets",
                f"cityscapes:{d}/cityscapes:val",
                f"cityscapes:{d}/cityscapes:val:mismatch=skip",
            ],
            {},
            "are one column (C)",
        ),
        (
            "adapt under torchrun",
            [*adapt, "--target", "night"],
            {"WORLD_SIZE": "2", "RANK": "1"},
            "famix adapt runs in one process",
        ),
        (
            "corrupt image in a loader worker",
            ["eval", ckpt, "--data", f"cityscapes:{d}/broken:val", "--workers", "1", "--device", "cpu"],
            {},
            "leftImg8bit.png",
        ),
        ("infinite lr", [*train, "train.lr=inf"], {}, "config train.lr=inf: give a finite number"),
        (
            "convert clip of a text file",
            ["convert", "clip", str(w / "notes.txt"), str(w / "clip.safetensors")],
            {},
            "notes.txt is not CLIP weights famix can read",
        ),
        (
            "convert clip of a segmenter checkpoint",
            ["convert", "clip", ckpt, str(w / "clip.safetensors")],
            {},
            "best.pt is a famix or FAMix segmenter checkpoint, not CLIP weights",
        ),
        ("push without the network", ["push", ckpt, "me/model"], {}, "famix push needs the network"),
        (
            "convert clip onto a training checkpoint",
            ["convert", "clip", ckpt, str(w / "run" / "latest.pt")],
            {},
            "latest.pt exists and is not CLIP weights (safetensors) written by `famix convert clip`",
        ),
        (
            "eval --json over a file famix did not write",
            [
                "eval",
                ckpt,
                "--data",
                "synthetic:day:2:size=48",
                "--json",
                str(w / "notes.txt"),
                "--device",
                "cpu",
            ],
            {},
            "notes.txt exists and is not a results file written by `famix eval`",
        ),
        ("nan lr from YAML", [*train, "train.lr=.nan"], {}, "config train.lr=nan: give a finite number"),
        (
            "nan adapt weight decay",
            [*adapt, "--target", "night", "--weight-decay", "nan"],
            {},
            "--weight-decay=nan: give a finite number >= 0",
        ),
        (
            "a training log famix did not write",
            ["train", "-c", "tiny", f"train.out={w / 'their-run'}", "style.mix=mixstyle", *FAST],
            {},
            "their-run/metrics.jsonl is not a training log famix wrote",
        ),
        (
            "reproduce: a training log famix did not write, in a seed's folder",
            [
                "reproduce",
                "-c",
                "tiny",
                *FAST,
                "style.mix=mixstyle",
                f"data.train=gta5:{d}/gta5",
                "--out",
                str(w / "their-repro"),
                "--targets",
                f"cityscapes:{d}/cityscapes:val",
            ],  # fmt: skip
            {},
            "their-repro/seed0/metrics.jsonl is not a training log famix wrote",
        ),
        (
            "adapt: a training log famix did not write, in the target's folder",
            [
                "adapt",
                ckpt,
                "--data",
                "synthetic:day:4:size=48",
                "--out",
                str(w / "their-adapt"),
                "--target",
                "night",
            ],  # fmt: skip
            {},
            "their-adapt/night/metrics.jsonl is not a training log famix wrote",
        ),
        (
            "rendezvous timeout that is no number",
            train,
            _lone_rank("abc"),
            "FAMIX_RENDEZVOUS_TIMEOUT='abc': give a whole number of seconds",
        ),
        (
            "a Hub tag not in the cache, offline",
            [
                "mine",
                "-c",
                "gta5_convnextl",
                f"style.bank={w / 'b.safetensors'}",
                "data.train=synthetic:day:4:size=48",
            ],
            {},
            "is not in the local cache, and HF_HUB_OFFLINE is set",
        ),
        (
            "a dataset spec with no folder",
            ["eval", ckpt, "--data", "cityscapes"],
            {},
            "--data cityscapes: the spec names no dataset folder: write it as cityscapes:ROOT[:SPLIT]",
        ),
        (
            "a style bank path that is a folder",
            ["mine", "-c", "tiny", *FAST, f"style.bank={w / 'data'}", "data.train=synthetic:day:4:size=48"],
            {},
            "style.bank " + str(w / "data") + " is a folder: pass the path of the file to write",
        ),
        (
            "source list with a bad entry",
            [*train, f"data.train=[synthetic:day:8:size=64,gta6:{d}/gta5]"],
            {},
            f"data.train gta6:{d}/gta5: unknown dataset 'gta6'",
        ),
        (
            "source list with a missing folder",
            [*train, f"data.train=[synthetic:day:8:size=64,gta5:{w}/nowhere]"],
            {},
            f"data.train gta5:{w}/nowhere: gta5: dataset root folder not found",
        ),
        (
            "weights not matching the sources",
            [
                *train,
                "data.train=[synthetic:day:8:size=64,synthetic:desert:8:1:size=64]",
                "data.train_weights=[1]",
            ],
            {},
            "data.train_weights=[1.0]: give one weight per data.train source (2, in its order)",
        ),
        (
            "a zero source weight",
            [
                *train,
                "data.train=[synthetic:day:8:size=64,synthetic:desert:8:1:size=64]",
                "data.train_weights=[1,0]",
            ],
            {},
            "data.train_weights=[1.0, 0.0]: give numbers > 0",
        ),
        (
            "eval with a condition of empty text",
            ["eval", ckpt, "--data", "synthetic:day:2:size=32", "--condition", " "],
            {},
            "--condition ' ' names no condition: describe it in words",
        ),
        (
            "diagnose an empty target folder",
            ["diagnose", ckpt, "--data", str(w / "empty")],
            {},
            f"nothing found for input {str(w / 'empty')!r}",
        ),
        (
            "diagnose with a condition of empty text",
            ["diagnose", ckpt, "--data", "synthetic:day:2:size=32", "--words", " "],
            {},
            "--words: a condition of empty text",
        ),
        (
            "adapt --target auto without its images",
            [*adapt, "--target", "auto"],
            {},
            "--target auto names the target from its images: give them with --target-data",
        ),
        (
            "adapt --target auto with an empty target folder",
            [*adapt, "--target", "auto", "--target-data", str(w / "empty")],
            {},
            f"--target-data: nothing found for input {str(w / 'empty')!r}",
        ),
        (
            "demo --sources with --ablation",
            ["demo", "--sources", "--ablation", "--out", str(w / "demo-sources")],
            {},
            "--sources is a demo of its own: drop --adapt / --ablation",
        ),
        (
            "adapt --target auto on a model naming no CLIP weights",
            [*adapt, "--target", "auto", "--target-data", str(d / "gta5" / "images")],
            {},
            "the model names no CLIP weights readable here: pass the CLIP it was trained from with --weights",
        ),
        (
            "app without a model",
            ["app"],
            {},
            "give a checkpoint (or a saved folder, or hf:OWNER/NAME), or --demo",
        ),
        ("app with a model and --demo", ["app", ckpt, "--demo"], {}, "or --demo"),
        ("app --quick without --demo", ["app", ckpt, "--quick"], {}, "--quick is for --demo"),
        (
            "app on a port out of range",
            ["app", ckpt, "--port", "70000"],
            {},
            "--port 70000: give a port number",
        ),
        (
            "app with source data that is not there",
            ["app", ckpt, "--data", f"gta5:{w / 'nowhere'}", "--port", str(_free_port())],
            {},
            "--data gta5:",
        ),
        (
            "seeds given to adapt as a list",
            [*adapt, "--target", "night", "--seed", "x"],
            {},
            "--seed: invalid int value",
        ),
    ]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


ROWS = [r[0] for r in _rows(Path("/"))]


@pytest.mark.parametrize("row", ROWS)
def test_bad_input_is_one_clear_line_before_any_work(row, world, monkeypatch, capsys):
    _, argv, env, says = next(r for r in _rows(world) if r[0] == row)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(world)
    before = _tree(world)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code != 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    if says is None:  # a report, not an error: a non-zero status is the point
        assert "PROBLEM" in out
    else:
        lines = [line for line in err.splitlines() if line.startswith("famix")]  # not progress bars
        assert len(lines) == 1, err
        assert says in lines[0]
    assert _tree(world) == before  # nothing written, nothing replaced


def test_long_adapt_targets_get_short_distinct_folders():
    from famix.stages.adapt import SLUG_CHARS, slug

    long = "driving through a city at night in heavy rain " * 8
    assert len(slug(long)) <= SLUG_CHARS and slug(long) != slug(long + "with fog")
    assert slug("Driving at night!") == "driving-at-night"


def test_a_crop_larger_than_the_images_warns_before_training(tmp_path):
    from famix.config import load_config
    from famix.engine.checks import check_train_inputs

    cfg = load_config("tiny", [f"train.out={tmp_path}", "data.crop=1000", "style.mix=none"])
    with pytest.warns(UserWarning, match=r"data.crop=1000 is larger than the images of .* \(64x64\)"):
        check_train_inputs(cfg)


def test_every_adapt_setting_has_its_cli_option():
    from dataclasses import fields

    from famix.cli import build_parser
    from famix.stages.adapt import AdaptSettings

    values = {"recipe": "famix", "iterations": "3", "lr": "0.5", "steps": "2", "pin_lr": "0.25",
              "pin_batch": "3", "weight_decay": "0.001", "images": "4", "crop": "32",
              "batch_size": "2", "seed": "7", "amp": "off", "device": "cpu", "workers": "1",
              "ckpt_interval": "5", "save_every": "6"}  # fmt: skip
    assert set(values) == {f.name for f in fields(AdaptSettings)}
    argv = ["adapt", "c.pt", "--target", "night", "--data", "d", "--out", "o"]
    for name, value in values.items():
        argv += [f"--{name.replace('_', '-')}", value]
    args = build_parser().parse_args(argv)
    settings = AdaptSettings(**{f.name: getattr(args, f.name) for f in fields(AdaptSettings)})
    assert settings == AdaptSettings(
        recipe="famix", iterations=3, lr=0.5, steps=2, pin_lr=0.25, pin_batch=3, weight_decay=0.001, images=4,
        crop=32, batch_size=2, seed=7, amp="off", device="cpu", workers=1, ckpt_interval=5, save_every=6,
    )  # fmt: skip


def test_datasets_check_decodes_as_many_pairs_as_asked(tmp_path, capsys):
    fake.cityscapes(tmp_path / "cs", {"val": {"ulm": 2}})
    image = next((tmp_path / "cs" / "leftImg8bit").rglob("*.png"))
    image.write_bytes(image.read_bytes()[:60])  # found only when decoded
    for decode, status in ((None, 1), (0, 0)):
        with pytest.raises(SystemExit) as exit_:
            main(
                [
                    "datasets",
                    "check",
                    f"cityscapes:{tmp_path / 'cs'}:val",
                    *(["--decode", str(decode)] if decode is not None else []),
                ]
            )
        assert exit_.value.code == status, capsys.readouterr().out


def test_yaml_booleans_are_the_words_the_user_typed(tmp_path):
    """YAML 1.1 reads off / no / false as False: run.amp=off (override or file) means amp off."""
    from famix.config import load_config

    assert load_config("tiny", ["run.amp=off"]).run.amp == "off"
    (tmp_path / "cfg.yaml").write_text("run:\n  amp: off\n")
    assert load_config(str(tmp_path / "cfg.yaml")).run.amp == "off"
    with pytest.raises(ValueError, match="run.amp=.on.: choose one of auto, bf16, fp16, off"):
        from famix.engine.amp import amp_dtype

        amp_dtype(load_config("tiny", ["run.amp=on"]).run.amp, torch.device("cpu"))


def test_the_recipes_crop_on_small_images_warns_before_adapt_mines(checkpoint, tmp_path, monkeypatch):
    from famix.stages import adapt

    def mined(*args, **kwargs):
        raise RuntimeError("mining started")

    monkeypatch.setattr(adapt, "mine_pass", mined)
    settings = adapt.AdaptSettings(device="cpu", steps=1, iterations=1)  # PODA's recipe: crop 768
    with (
        pytest.warns(
            UserWarning, match=r"--crop=768 is larger than the images of synthetic:day:4:size=48 \(48x48\)"
        ),
        pytest.raises(RuntimeError, match="mining started"),
    ):
        adapt.run(
            checkpoint, ["night"], "synthetic:day:4:size=48", tmp_path, settings=settings, progress=False
        )


def test_a_folder_with_a_colon_in_its_name_is_a_spec_with_an_escaped_colon(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    root = tmp_path / "scans:2024"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "labels" / "a.png")
    spec = "folder:" + str(root).replace(":", "\\:")
    from famix.data.datasets import build_dataset
    from famix.data.specs import parse_spec

    assert parse_spec(spec).root == str(root) and len(build_dataset(spec)) == 1
    assert parse_spec(spec).with_root(str(root)).text == spec


def _label_set(tmp_path, name: str, classes: list[dict]):
    import yaml

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"classes": classes}))
    return path


def test_labels_that_cannot_occur_are_refused_and_unclaimed_ones_named_before_work(tmp_path, capsys):
    import numpy as np

    from famix.data.datasets import build_dataset
    from famix.data.label_sets import load

    source = "synthetic:day:3:size=48"
    base = ["train", "-c", "tiny", "style.mix=mixstyle", f"data.train={source}", *FAST]
    one = _label_set(tmp_path, "one", [{"name": "thing"}])
    err = one_line(capsys, *base, f"model.classes={one}", f"train.out={tmp_path / 'a'}")
    assert "a label set needs at least two classes" in err and not (tmp_path / "a").exists()
    raw = _label_set(tmp_path, "raw", [{"name": "flat", "ids": [7]}, {"name": "vehicle", "ids": [26, 27]}])
    err = one_line(capsys, *base, f"model.classes={raw}", f"train.out={tmp_path / 'b'}")
    assert (
        f"data.train {source}: the label set's classes vehicle (ids 26, 27) can never occur: this dataset's "
        "labels are the 19 Cityscapes trainIds (0-18)" in err
    ) and not (tmp_path / "b").exists()
    # six classes with the default ids 0-5 over data of 19 trainIds: trainIds 6-18 read as ignore (named)
    six = load(_label_set(tmp_path, "six", [{"name": n} for n in "abcdef"]))
    with pytest.warns(
        UserWarning, match=r"claims no class for trainIds 6 traffic light, 7 traffic sign, .* 18 "
    ):
        from famix.engine.checks import check_specs

        check_specs([source], "data.train", six)
    plain, read = build_dataset(source), build_dataset(source, six)
    for i in range(len(plain)):
        trainids, classes = plain[i][1].numpy(), read[i][1].numpy()
        assert np.array_equal(
            classes, np.where(trainids < 6, trainids, 255)
        )  # never a class past the set's end


def test_a_folder_dataset_s_unclaimed_values_are_counted_and_no_match_refused(tmp_path):
    import numpy as np
    from PIL import Image

    from famix.data.label_sets import load
    from famix.engine.checks import check_specs

    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    labels = [
        np.array([[0, 0, 1, 9], [9, 9, 9, 1]], np.uint8),
        np.array([[4, 4, 4, 4], [0, 1, 0, 9]], np.uint8),
    ]
    for i, label in enumerate(labels):
        Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(label).save(root / "labels" / f"{i}.png")
    two = load(_label_set(tmp_path, "two", [{"name": "a", "ids": [0]}, {"name": "b", "ids": [1]}]))
    stack = np.stack(labels)
    expected = (
        f"{(stack == 9).sum() + (stack == 4).sum()} of {stack.size} pixels in 2 label files read hold values"
    )
    counts = f"9: {(stack == 9).sum()} px, 4: {(stack == 4).sum()} px"
    with pytest.warns(UserWarning, match=f"{expected} no class of the label set claims \\({counts}\\)"):
        check_specs([f"folder:{root}"], "--data", two)
    other = load(_label_set(tmp_path, "other", [{"name": "x", "ids": [50]}, {"name": "y", "ids": [51]}]))
    with pytest.raises(
        ValueError, match=r"--data folder:.*: no pixel of 2 label files read \(of 2\) belongs to a"
    ):
        check_specs([f"folder:{root}"], "--data", other)
