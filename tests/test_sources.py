"""Several sources (``data.train`` a list, ``data.train_weights``): the sampler against loop oracles, each
source's labels read pixel for pixel as the fake datasets wrote them, proportions over epochs, bit-exact
resume, refusals naming the key, mining in proportion, the one-source record unchanged, and bad inputs
refused before any work through the real CLI."""

from __future__ import annotations

import random
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from famix.config import load_config
from famix.data.transforms import synthia_transform, train_transform
from famix.engine.checkpoint import load_checkpoint
from famix.engine.distributed import DistInfo
from famix.engine.sampler import MixedStreamSampler, SourceMix, StreamSampler, allocate, stream_sampler
from famix.engine.seeds import item_seed
from famix.engine.train import make_train_loader
from famix.stages import mine, train
from tests import fake_datasets as fake
from tests.cli_errors import one_line

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "famix" / "configs"
# Cityscapes' 19 evaluated classes in trainId order, and the labelIds they come from (cityscapesScripts)
CITYSCAPES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
              "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
              "bicycle"]  # fmt: skip
LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
# SYNTHIA-RAND-CITYSCAPES' classes by id (its README) that have a Cityscapes class; 0 void, 13 parking-slot,
# 14 road-work and 22 lanemarking have none
SYNTHIA = {1: "sky", 2: "building", 3: "road", 4: "sidewalk", 5: "fence", 6: "vegetation", 7: "pole",
           8: "car", 9: "traffic sign", 10: "person", 11: "bicycle", 12: "motorcycle", 15: "traffic light",
           16: "terrain", 17: "rider", 18: "truck", 19: "bus", 20: "train", 21: "wall"}  # fmt: skip


# ------------------------------------------------------------------------- the sampler against loops


def _allocate_loop(total: int, weights: list[int]) -> list[int]:
    """Largest remainders, exactly: whole parts first, then one more to each of the largest remainders in
    turn (the earlier source first among equal ones)."""
    quotas = [Fraction(total * w, sum(weights)) for w in weights]
    counts = [int(q) for q in quotas]
    while sum(counts) < total:
        k = max(range(len(weights)), key=lambda i: (quotas[i] - int(quotas[i]), -i))
        quotas[k] = Fraction(int(quotas[k]))  # served
        counts[k] += 1
    return counts


def _slots_loop(counts: list[int]) -> list[int]:
    """The slot order by merging: at each slot, the source whose next slot, (j + 1/2) / n, comes first."""
    taken, order = [0] * len(counts), []
    for _ in range(sum(counts)):
        due = [(Fraction(2 * taken[k] + 1, 2 * n), k) for k, n in enumerate(counts) if taken[k] < n]
        _, k = min(due)
        order.append(k)
        taken[k] += 1
    return order


def test_allocation_and_slots_equal_their_loops():
    rng = random.Random(0)
    for _ in range(200):
        sizes = [rng.randint(1, 40) for _ in range(rng.randint(2, 4))]
        weights = [rng.randint(1, 9) for _ in sizes]
        total = sum(sizes)
        counts = allocate(total, weights)
        assert counts == _allocate_loop(total, weights)
        assert sum(counts) == total and all(
            abs(n - total * w / sum(weights)) < 1 for n, w in zip(counts, weights, strict=True)
        )
        mix = SourceMix.of(sizes, weights)
        assert list(mix.counts) == counts and list(mix.sources) == _slots_loop(counts)
        seen = [0] * len(sizes)
        for k, j in zip(mix.sources, mix.ranks, strict=True):
            assert j == seen[k]  # each source's slots in order
            seen[k] += 1
    assert SourceMix.of([7, 3]).counts == (7, 3)  # no weights: by size


def _source(index: int, sizes: list[int]) -> int:
    return int(np.searchsorted(np.cumsum(sizes), index, side="right"))


@pytest.mark.parametrize(
    "sizes,weights", [([5, 3], [1.0, 3.0]), ([4, 7, 2], [0.2, 0.5, 0.3]), ([6, 2], None)]
)
def test_every_epoch_holds_each_source_in_its_share(sizes, weights):
    total, epochs, batch = sum(sizes), 2 * max(sizes), 4
    steps = -(-total * epochs // batch)  # whole epochs, and a little more
    sampler = MixedStreamSampler(SourceMix.of(sizes, weights), batch, seed=3, steps=steps)
    items = list(sampler)
    counts = allocate(total, weights or sizes)
    per_source: list[list[int]] = [[] for _ in sizes]
    for e in range(epochs):
        epoch = [index for index, _ in items[e * total : (e + 1) * total]]
        assert [sum(_source(i, sizes) == k for i in epoch) for k in range(len(sizes))] == counts
        for i in epoch:
            k = _source(i, sizes)
            per_source[k].append(i - sum(sizes[:k]))
    for k, drawn in enumerate(per_source):  # a source's draws: its permutations one after another
        n = sizes[k]
        for start in range(0, len(drawn) - n + 1, n):
            assert sorted(drawn[start : start + n]) == list(range(n))
    assert [seed for _, seed in items] == [item_seed(3, q) for q in range(len(items))]  # as one source's
    if weights is None:  # by size: every epoch is a permutation of all the images
        assert all(
            sorted(i for i, _ in items[e * total : (e + 1) * total]) == list(range(total)) for e in range(2)
        )


def test_the_mixed_stream_resumes_and_shards_as_one_source_does():
    mix = SourceMix.of([5, 3, 4], [2.0, 1.0, 1.0])
    whole = list(MixedStreamSampler(mix, 3, seed=1, steps=12))
    assert list(MixedStreamSampler(mix, 3, seed=1, start_step=7, steps=12)) == whole[7 * 3 :]
    ranks = [list(MixedStreamSampler(mix, 3, seed=1, rank=r, world_size=2, steps=6)) for r in range(2)]
    merged = [item for step in range(6) for r in range(2) for item in ranks[r][step * 3 : (step + 1) * 3]]
    assert merged == whole
    one = stream_sampler([9], [4.0], 3, seed=2, steps=5)  # one source: the one-source stream, weights or not
    assert type(one) is StreamSampler and list(one) == list(StreamSampler(9, 3, seed=2, steps=5))


# ------------------------------------------------------------------ fake GTA5 + SYNTHIA, through the run


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    fake.gta5(root / "gta5", 3)
    fake.synthia(root / "synthia", {"train": 2, "val": 1})
    return root


def _specs(root: Path) -> list[str]:
    return [f"gta5:{root / 'gta5'}", f"synthia:{root / 'synthia'}:train"]


def _expected(item: tuple[int, int], root: Path, crop: int, to_classes) -> tuple[torch.Tensor, torch.Tensor]:
    """The crop and label the loader must give for item (index, seed): the fake files read by PIL, the raw ids
    the makers wrote mapped here (labelIds / SYNTHIA ids -> trainIds -> the run's classes), the source's own
    augmentation with the item's seed."""
    index, seed = item
    if index < 3:  # GTA5 images 00001..00003 in name order
        i = index + 1
        path = root / "gta5" / "images" / f"{i:05d}.png"
        raw = fake.raster(fake.CITYSCAPES_VALUES, first=7 + i)
        trainid = {lid: t for t, lid in enumerate(LABEL_IDS)}
        transform = train_transform(crop)
    else:
        k = index - 3
        path = root / "synthia" / "RGB" / "train" / f"{k:07d}.png"
        raw = fake.raster(fake.SYNTHIA_VALUES, first=1 + k % 22)
        trainid = {sid: CITYSCAPES.index(name) for sid, name in SYNTHIA.items()}
        transform = synthia_transform(crop)
    label = np.full(raw.shape, 255, np.uint8)
    for y, x in np.ndindex(*raw.shape):
        t = trainid.get(int(raw[y, x]))
        label[y, x] = 255 if t is None else to_classes(t)
    image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).contiguous()
    out_image, out_label, _ = transform(image, torch.from_numpy(label), torch.Generator().manual_seed(seed))
    return out_image, out_label


def _categories() -> Callable[[int], int]:
    classes = yaml.safe_load((CONFIGS / "classes" / "cityscapes_categories.yaml").read_text())["classes"]
    return lambda t: next(c for c, entry in enumerate(classes) if t in entry["ids"])


@pytest.mark.parametrize("classes", [None, "cityscapes_categories"])
def test_a_two_source_run_reads_each_source_pixel_for_pixel(data, classes):
    """The loader of a two-source run: each item comes from its source with that source's recipe, and its
    labels are the fake files' ids mapped into the run's label set (SYNTHIA's void, parking-slot, road-work,
    lane-marking and out-of-range ids ignored, not a class)."""
    crop = 64  # larger than the 16 x 24 images: every pixel of each label reaches the crop
    extra = [f"model.classes={classes}"] if classes else []
    sources = f"data.train=[{','.join(_specs(data))}]"
    size = [f"data.crop={crop}", "data.batch_size=5", "train.iterations=3"]
    cfg = load_config("tiny", [sources, *size, *extra])
    loader = make_train_loader(cfg, DistInfo(), 0)
    items = list(loader.sampler)
    to_classes = _categories() if classes else (lambda t: t)
    seen: list[set[int]] = [set(), set()]  # label values that came, per source
    for step, (images, labels, _) in enumerate(loader):
        for b in range(5):
            item = items[step * 5 + b]
            image, label = _expected(item, data, crop, to_classes)
            assert torch.equal(images[b], image) and torch.equal(labels[b], label), item
            seen[item[0] >= 3] |= set(labels[b].unique().tolist())
    # every class each source's ids map to came, and ignore: the comparison covered the whole mapping
    assert seen[0] == {to_classes(t) for t in range(19)} | {255}
    assert seen[1] == {to_classes(CITYSCAPES.index(name)) for name in SYNTHIA.values()} | {255}


def _resume_cfg(root: Path, out: Path, *extra: str):
    return load_config("tiny", [
        f"train.out={out}", f"data.train=[{','.join(_specs(root))}]", "data.train_weights=[1,3]",
        "data.crop=24", "data.batch_size=2", "data.val=[]", "style.mix=mixstyle", "train.iterations=6",
        "train.log_interval=1", *extra,
    ])  # fmt: skip


def test_a_two_source_run_resumes_bit_exact_and_refuses_another_source_list(data, tmp_path):
    train.run(_resume_cfg(data, tmp_path / "a"))
    train.run(_resume_cfg(data, tmp_path / "b", "train.stop_after=3"))
    train.run(_resume_cfg(data, tmp_path / "b"))
    a, b = (load_checkpoint(tmp_path / r / "latest.pt") for r in "ab")
    assert a["cur_itrs"] == b["cur_itrs"] == 6
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), k
    momenta = [
        (x["momentum_buffer"], y["momentum_buffer"])
        for x, y in zip(
            a["optimizer_state"]["state"].values(), b["optimizer_state"]["state"].values(), strict=True
        )
    ]
    assert momenta and all(torch.equal(x, y) for x, y in momenta)
    assert a["run"]["settings"]["data"]["train"] == _specs(data)
    assert a["run"]["settings"]["data"]["train_weights"] == [1.0, 3.0]
    before = (tmp_path / "a" / "latest.pt").read_bytes()
    gta5, synthia = _specs(data)
    for change, says in (
        ([f"data.train={gta5}", "data.train_weights=null"], f"data.train: {_specs(data)!r} -> {gta5!r}"),
        (["data.train_weights=[1,1]"], "data.train_weights: [1.0, 3.0] -> [1.0, 1.0]"),
        ([f"data.train=[{synthia},{gta5}]", "data.train_weights=[3,1]"], f"-> {[synthia, gta5]!r}"),  # order
    ):
        with pytest.raises(FileExistsError, match="other settings") as refused:
            train.run(_resume_cfg(data, tmp_path / "a", *change))
        assert says in str(refused.value), str(refused.value)
    assert (tmp_path / "a" / "latest.pt").read_bytes() == before


def test_a_one_source_record_is_the_record_before_several_sources(tmp_path):
    spec = "synthetic:day:8:size=64"
    base = [f"train.out={tmp_path}", "style.mix=mixstyle"]
    record = train.train_record(load_config("tiny", [*base, f"data.train={spec}"]))
    assert record.settings["data"] == {
        "train": spec,
        "crop": 48,
        "batch_size": 4,
        "jitter": 0.8,
        "hflip": 0.5,
    }
    for same in ([f"data.train=[{spec}]"], [f"data.train=[{spec}]", "data.train_weights=[2]"]):
        assert train.train_record(load_config("tiny", [*base, *same])) == record
    assert mine.mine_record(load_config("tiny", [f"data.train={spec}"])).settings["data"] == {"train": spec}


# -------------------------------------------------------------------------------------------- mining


def test_mining_draws_from_every_source_in_proportion(tmp_path, capsys):
    from famix.cli import main
    from famix.style.bank import StyleBank
    from famix.world import SECOND_SOURCE_DOMAIN, SyntheticDataset

    specs = ["synthetic:day:6:size=32", f"synthetic:{SECOND_SOURCE_DOMAIN}:3:1:size=32"]
    sources = [SyntheticDataset("day", 6, (32, 32)), SyntheticDataset(SECOND_SOURCE_DOMAIN, 3, (32, 32), 1)]
    overrides = [f"data.train=[{','.join(specs)}]", "data.train_weights=[1,2]", "mine.crop=32"]
    view = mine.source_set(load_config("tiny", overrides)).base  # the images mining reads, in its order
    counts = allocate(9, [1, 2])
    taken = [0, 0]
    for i, k in enumerate(_slots_loop(counts)):  # slot by slot: the source's next image, cycling
        image, label = view[i]
        want_image, want_label = sources[k][taken[k] % len(sources[k])]
        assert torch.equal(image, want_image) and torch.equal(label, want_label), i
        taken[k] += 1
    assert taken == counts == [3, 6]  # the small source's images twice each, as its share asks
    bank = tmp_path / "bank.safetensors"
    main(["mine", "-c", "tiny", *overrides, f"style.bank={bank}", "mine.max_images=6", "mine.batch_size=3",
          "mine.steps=1"])  # fmt: skip
    record = StyleBank.load(bank).record
    assert record["settings"]["data"] == {"train": specs, "train_weights": [1.0, 2.0]}
    assert StyleBank.load(bank).metadata["images"] == 6
    # the first 6 of the 9 slots hold each source in proportion, within one
    first = _slots_loop(counts)[:6]
    assert abs(first.count(0) - 6 / 3) <= 1 and abs(first.count(1) - 6 * 2 / 3) <= 1


def test_the_second_source_is_the_same_street_in_another_look():
    from famix.world import SECOND_SOURCE_DOMAIN, SHIFTED_DOMAINS, SOURCE_DOMAIN, SyntheticDataset

    assert SECOND_SOURCE_DOMAIN not in (SOURCE_DOMAIN, *SHIFTED_DOMAINS)
    day, other = SyntheticDataset("day", 2, (32, 32)), SyntheticDataset(SECOND_SOURCE_DOMAIN, 2, (32, 32))
    assert all(
        torch.equal(day[i][1], other[i][1]) and not torch.equal(day[i][0], other[i][0]) for i in range(2)
    )


# ------------------------------------------------------------------------------ presets, composites


@pytest.mark.parametrize("name", ["rn50", "vitb16", "vitl14", "eva02b16", "eva02l14"])
def test_gta5_synthia_presets_are_their_gta5_presets_on_both_sources(name):
    gs, g = load_config(f"gs_{name}"), load_config(f"gta5_{name}")
    assert gs.data.train == ["gta5:data/gta5:train", "synthia:data/synthia:train"]
    assert gs.data.train_weights is None and gs.data.val == ["gta5:data/gta5:val", "synthia:data/synthia:val"]
    assert (gs.style.bank, gs.train.out) == (f"banks/gs_{name}.safetensors", f"runs/gs_{name}")
    for c in (gs, g):
        c.data.train, c.data.val, c.style.bank, c.train.out = None, None, None, None
    assert gs == g


def test_reproduce_moves_every_source_under_the_root_and_checks_each(data, tmp_path):
    from famix.stages.reproduce import dry_run, make_plan

    cfg = load_config("gs_rn50", ["data.train=[gta5:data/gta5,synthia:data/synthia:train]", "data.val=[]"])
    plan = make_plan(cfg, str(tmp_path / "out"), 1, str(data), [f"gta5:{data / 'gta5'}"], say=lambda _: None)
    assert plan.cfg.data.train == _specs(data)
    text, _ = dry_run(plan)
    assert f"  {_specs(data)[0]}: ok (3 images)" in text and f"  {_specs(data)[1]}: ok (2 images)" in text


def test_a_two_source_model_is_adapted_and_calibrated_on_one_source():
    from famix.config import check_values
    from famix.stages.adapt import AdaptSettings, fine_tune_config
    from famix.stages.export import stored_source

    stored = {"data": {"train": ["synthetic:day:4", "synthetic:desert:4:1"], "train_weights": [1.0, 2.0]}}
    cfg = fine_tune_config(stored, "synthetic:day:4", Path("run"), AdaptSettings())
    check_values(cfg)
    assert (cfg.data.train, cfg.data.train_weights) == ("synthetic:day:4", None)
    assert stored_source(stored) == "synthetic:day:4" and stored_source({"data": {"train": "x:y"}}) == "x:y"


# ---------------------------------------------------------------------------------------- bad inputs


def _rows(tmp_path: Path) -> list[tuple[list[str], str, bool]]:
    """(argv, what the first line says, whether the expected folder layout follows it): rows of
    tests/test_bad_inputs.py's kind."""
    ok, missing = "synthetic:day:8:size=64", f"gta5:{tmp_path / 'nowhere'}"
    train_ = ["train", "-c", "tiny", f"train.out={tmp_path / 'run'}", "style.mix=mixstyle"]
    mine_ = ["mine", "-c", "tiny", f"style.bank={tmp_path / 'bank.safetensors'}"]
    two = f"data.train=[{ok},synthetic:desert:8:1:size=64]"
    per = "give one weight per data.train source (2, in its order)"
    absent = "gta5: dataset root folder not found"
    return [
        ([*train_, f"data.train=[{ok},{missing}]"], f"data.train {missing}: {absent}", True),
        ([*mine_, f"data.train=[{ok},{missing}]"], f"data.train {missing}: {absent}", True),
        ([*train_, f"data.train=[{ok},synthetic:dusk2:4]"], "data.train synthetic:dusk2:4: unknown", False),
        ([*mine_, f"data.train=[{ok},gta6:/d]"], "data.train gta6:/d: unknown dataset 'gta6'", False),
        ([*train_, two, "data.train_weights=[1]"], f"data.train_weights=[1.0]: {per}", False),
        ([*train_, two, "data.train_weights=[1,2,3]"], f"data.train_weights=[1.0, 2.0, 3.0]: {per}", False),
        ([*mine_, two, "data.train_weights=[1,0]"], "data.train_weights=[1.0, 0.0]: give numbers > 0", False),
        ([*train_, "data.train=[]"], "data.train=[]: give a dataset spec", False),
        ([*train_, f"data.train=[{ok},{ok}]"], f"data.train lists {ok} more than once", False),
    ]  # fmt: skip


def test_bad_source_lists_are_one_clear_line_before_any_work(tmp_path, capsys):
    for argv, says, hint in _rows(tmp_path):
        line = one_line(capsys, *argv, hint=hint)
        assert line.startswith("famix") and says in line, (argv, line)
        assert list(tmp_path.iterdir()) == [], argv  # nothing written: no run folder, no bank, no lock
