"""Label sets: parsing and its errors, the id / colour maps against plain loops, grouping confusion matrices,
the config key model.classes, and the default path pinned bit for bit to what famix computed before label
sets existed."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from famix.config import load_config
from famix.data import label_sets
from famix.data.trainids import CLASS_NAMES, palette
from famix.engine.checkpoint import load_checkpoint, load_segmenter
from famix.engine.evaluate import confusion_matrix, group_confusion
from famix.stages import mine, train
from famix.style.bank import StyleBank
from tests.pins import pins_for

FIVE = {
    "ignore_index": 0,
    "classes": [
        {"name": "road", "color": [128, 64, 128], "ids": [7, 8]},
        {"name": "vehicle", "color": [0, 0, 142], "ids": [26, 27, 28], "prompt": "car or truck"},
        {"name": "sky", "ids": [300]},
        "tree",
        {"name": "person", "color": [220, 20, 60], "ids": 24},
    ],
}


def test_parse_fills_defaults_and_round_trips():
    ls = label_sets.parse(FIVE, "test")
    assert ls.names == ["road", "vehicle", "sky", "tree", "person"]
    assert ls.prompts == ["road", "car or truck", "sky", "tree", "person"]
    assert [c.ids for c in ls.classes] == [(7, 8), (26, 27, 28), (300,), (3,), (24,)]
    assert ls.ignore_index == 0 and label_sets.parse(ls.to_dict(), "again") == ls
    colours = ls.colors()  # given colours kept, the others distinct defaults
    assert colours[0].tolist() == [128, 64, 128] and colours[4].tolist() == [220, 20, 60]
    assert len({tuple(c) for c in colours.tolist()}) == 5
    assert ls.palette()[:5].tolist() == colours.tolist() and not ls.palette()[5:].any()


def test_default_label_set_is_the_19_trainids():
    ls = label_sets.from_names(CLASS_NAMES)
    assert ls.is_identity() and ls.names == list(CLASS_NAMES)
    assert np.array_equal(ls.palette(), palette())
    assert not label_sets.parse(FIVE, "t").is_identity()
    assert label_sets.from_names(["a", "b"]).colors().tolist() != palette()[:2].tolist()


@pytest.mark.parametrize("shape", [(5, 7), (1, 33), (16, 24)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int64])
def test_map_ids_matches_a_loop(shape, dtype):
    ls = label_sets.parse(FIVE, "t")
    rng = np.random.default_rng(sum(shape))
    top = 256 if dtype == np.uint8 else 400
    raw = rng.integers(0, top, shape).astype(dtype)
    raw.flat[:8] = [0, 7, 8, 26, 3, 24, 28, 255][: raw.size]
    if dtype != np.uint8:
        raw.flat[-1] = 300
    expected = np.full(shape, 255, np.uint8)
    unclaimed = np.ones(shape, bool)
    for idx in np.ndindex(*shape):
        unclaimed[idx] = int(raw[idx]) != ls.ignore_index
        for k, c in enumerate(ls.classes):
            if int(raw[idx]) in c.ids:
                expected[idx], unclaimed[idx] = k, False
    assert np.array_equal(ls.map_ids(raw), expected)
    assert np.array_equal(ls.unclaimed_ids(raw), unclaimed) and unclaimed.any() and not unclaimed.all()


@pytest.mark.parametrize("shape", [(4, 6), (9, 3), (1, 1)])
def test_map_colors_matches_a_loop(shape):
    ls = label_sets.parse(
        {
            "ignore_color": [0, 0, 0],
            "classes": [
                {"name": n, "color": c} for n, c in (("a", [1, 2, 3]), ("b", [255, 0, 0]), ("c", [9, 9, 9]))
            ],
        },
        "t",
    )
    rng = np.random.default_rng(shape[0])
    pool = np.array([[1, 2, 3], [255, 0, 0], [9, 9, 9], [0, 0, 0], [3, 2, 1], [255, 0, 1]], np.uint8)
    rgb = pool[rng.integers(0, len(pool), shape)]
    expected = np.full(shape, 255, np.uint8)
    for idx in np.ndindex(*shape):
        for k, c in enumerate(ls.classes):
            if tuple(int(v) for v in rgb[idx]) == c.color:
                expected[idx] = k
    assert np.array_equal(ls.map_colors(rgb), expected)
    unclaimed = np.array([[tuple(int(v) for v in rgb[i]) not in {(1, 2, 3), (255, 0, 0), (9, 9, 9), (0, 0, 0)}
                           for i in np.ndindex(*shape)]]).reshape(shape)  # fmt: skip
    assert np.array_equal(ls.unclaimed_colors(rgb), unclaimed)
    unknown = {tuple(int(v) for v in rgb[i]) for i in np.ndindex(*shape)} - {
        (1, 2, 3),
        (255, 0, 0),
        (9, 9, 9),
        (0, 0, 0),
    }
    assert set(ls.unknown_colors(rgb)) == unknown


@pytest.mark.parametrize("k,g", [(19, 7), (5, 2), (40, 40)])
def test_group_confusion_matches_a_loop(k, g):
    gen = torch.Generator().manual_seed(k)
    cm = torch.randint(0, 50, (k, k), generator=gen)
    groups = torch.cat([torch.arange(g), torch.randint(0, g, (k - g,), generator=gen)])[
        torch.randperm(k, generator=gen)
    ]
    expected = torch.zeros(g, g, dtype=cm.dtype)
    for i in range(k):
        for j in range(k):
            expected[groups[i], groups[j]] += cm[i, j]
    assert torch.equal(group_confusion(cm, groups, g), expected)
    # the same as the confusion of the relabelled predictions and labels
    pred, label = torch.randint(0, k, (300,), generator=gen), torch.randint(0, k, (300,), generator=gen)
    assert torch.equal(
        group_confusion(confusion_matrix(pred, label, k), groups, g),
        confusion_matrix(groups[pred], groups[label], g),
    )


def test_cityscapes_categories_ship_and_group_the_19_classes():
    ls = label_sets.load("cityscapes_categories")
    assert ls.names == ["flat", "construction", "object", "nature", "sky", "human", "vehicle"]
    lut = ls.group_lut(19)
    names = dict(zip(CLASS_NAMES, lut.tolist(), strict=True))
    assert names["road"] == names["sidewalk"] == 0 and names["bicycle"] == names["car"] == 6
    assert names["person"] == names["rider"] == 5 and names["traffic sign"] == 2
    with pytest.raises(
        label_sets.LabelSetError, match=r"class .object. groups ids \[5, 6, 7\], but the model has 5 classes"
    ):
        ls.group_lut(5)
    partial = label_sets.parse({"classes": [{"name": "a", "ids": [0]}, {"name": "b", "ids": [1]}]}, "t")
    with pytest.raises(label_sets.LabelSetError, match=r"class\(es\) \[2\] are in no group"):
        partial.group_lut(3)


@pytest.mark.parametrize(
    "data,message",
    [
        ({"classes": [{"name": "a"}, {"name": "a"}]}, "two classes are named 'a'"),
        (
            {"classes": [{"name": "a", "ids": [3]}, {"name": "b", "ids": [3, 4]}]},
            "id 3 is claimed by both 'a' and 'b'",
        ),
        ({"classes": [{"name": "a", "ids": [255]}]}, "claims id 255, which is ignore_index"),
        ({"classes": [{"name": "a", "colour": [1, 2, 3]}]}, r"unknown key\(s\) \['colour'\]"),
        ({"classes": [{"name": "a", "color": [1, 2]}]}, r"must be \[R, G, B\]"),
        (
            {"classes": [{"name": "a", "color": [1, 2, 3]}, {"name": "b", "color": [1, 2, 3]}]},
            "two classes have color",
        ),
        ({"classes": []}, "non-empty list `classes:`"),
        ({"classes": [{"ids": [1]}]}, "class 0 needs a name"),
        ({"classes": [{"name": "a", "ids": [-1]}]}, "must be an integer in 0-65535"),
        ({"classes": [{"name": f"c{i}"} for i in range(256)]}, "at most 255"),
        ({"classes": ["a"], "ignore": 0}, r"unknown key\(s\) \['ignore'\]"),
    ],
)
def test_bad_label_sets_are_refused_by_name(data, message):
    with pytest.raises(label_sets.LabelSetError, match=message):
        label_sets.parse(data, "label set my.yaml")
    with pytest.raises(label_sets.LabelSetError, match="label set my.yaml"):
        label_sets.parse(data, "label set my.yaml")


def test_label_set_files_and_config_key(tmp_path):
    path = tmp_path / "five.yaml"
    path.write_text(json.dumps(FIVE))  # JSON is YAML
    cfg = load_config("tiny", [f"model.classes={path}"])
    assert cfg.model.num_classes == 5 and cfg.model.class_names == label_sets.parse(FIVE, "t").names
    assert (
        cfg.model.labels == label_sets.parse(FIVE, "t")
        and cfg.model.classes == label_sets.parse(FIVE, "t").to_dict()
    )
    assert load_config("tiny", [f"model.classes={path}", "model.num_classes=5"]).model.num_classes == 5
    with pytest.raises(ValueError, match=r"model.num_classes=19 contradicts model.classes \(5 classes"):
        load_config("tiny", [f"model.classes={path}", "model.num_classes=19"])
    with pytest.raises(FileNotFoundError, match="label set nowhere.yaml not found.*cityscapes_categories"):
        load_config("tiny", ["model.classes=nowhere.yaml"])
    (tmp_path / "bad.yaml").write_text("classes: [{name: a}, {name: a}]\n")
    with pytest.raises(ValueError, match=r"label set .*bad.yaml: two classes are named 'a'"):
        load_config("tiny", [f"model.classes={tmp_path / 'bad.yaml'}"])
    assert load_config("tiny", ["model.classes=cityscapes_categories"]).model.num_classes == 7
    default = load_config("tiny")
    assert default.model.classes is None and default.model.labels.is_identity()


def _h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _tensors(d: dict) -> bytes:
    return b"".join(k.encode() + v.contiguous().numpy().tobytes() for k, v in sorted(d.items()))


# What famix computed at commit e48879e (before label sets) for the run below, on the 2-core x86_64 CPU
# machine: the bank's tensors and metadata (less the version), the checkpoint's weights and run record, and
# the logits of one fixed input. The default path (no model.classes) must stay bit for bit the same.
# Bit-exact results depend on the CPU kernels torch picks (tests/pins.py): one table per machine seen (the
# AVX2 one computed at commit b61993e, whose default path is e48879e's, on the 2-core AMD EPYC container).
PINNED = {
    ("AVX512", "AuthenticAMD"): {  # the 2-core AMD EPYC container with avx512_bf16, at 03883ff
        "bank": "b5c04be23cbcb153", "state": "6c1a88a7faa8cb04", "record": "9edf1b8d813c540b",
        "logits": "dfb0df4e5614e6b6",
    },
    ("AVX512", None): {
        "bank": "061c28ef5af39995", "state": "a47002785767267a", "record": "be52901de73fbb74",
        "logits": "d2589f66e63d10f0",
    },
    ("AVX2", "AuthenticAMD"): {
        "bank": "f62a2fe42ace452f", "state": "69bfba4d687e5f65", "record": "92d9ef085282a558",
        "logits": "60ea4fc1e86597f5",
    },
}  # fmt: skip


def test_default_path_is_unchanged_bit_for_bit(tmp_path, pin_threads):
    pinned = pins_for(PINNED)
    fast = ["data.val=[]", "data.train=synthetic:day:8:size=48", "data.crop=32", "mine.crop=32"]
    bank = tmp_path / "bank.safetensors"
    cfg = load_config(
        "tiny",
        [
            *fast,
            f"style.bank={bank}",
            "mine.steps=2",
            "mine.max_images=8",
            f"train.out={tmp_path / 'run'}",
            "train.iterations=3",
        ],
    )
    mine.run(cfg, progress=False)
    train.run(cfg)
    b = StyleBank.load(bank)
    meta = {k: v for k, v in b.metadata.items() if k != "famix_version"}
    styles = {f"{kind}/{n}": t for n, (mu, sg) in b.styles.items() for kind, t in (("mu", mu), ("sigma", sg))}
    ckpt = load_checkpoint(tmp_path / "run" / "latest.pt")
    model, _ = load_segmenter(tmp_path / "run" / "latest.pt")
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
    got = {
        "bank": _h(
            _tensors(styles) + json.dumps(meta, sort_keys=True).encode() + json.dumps(b.class_names).encode()
        ),
        "state": _h(_tensors(ckpt["model_state"])),
        "record": _h(json.dumps(ckpt["run"], sort_keys=True).encode()),
        "logits": _h(logits.numpy().tobytes()),
    }
    assert got == pinned
    assert "label_set" not in b.metadata and "classes" not in ckpt["run"]["settings"]["model"]
