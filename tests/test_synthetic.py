"""Tests for famix.world.synthetic: determinism, domain-free labels, class coverage, domain statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from famix.data.trainids import IGNORE_INDEX, NUM_CLASSES, TRAIN_ID
from famix.world.synthetic import (
    DOMAINS,
    SHIFTED_DOMAINS,
    SOURCE_DOMAIN,
    STYLES,
    SyntheticDataset,
    _scene,
    render,
)

SIZE = (96, 128)
REQUIRED = ("road", "sidewalk", "building", "pole", "vegetation", "terrain", "sky", "person", "car")
REQUIRED += ("traffic sign", "traffic light")


def _luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _saturation(image: np.ndarray) -> float:
    return float((image.max(-1).astype(np.int16) - image.min(-1)).mean())


@pytest.fixture(scope="module")
def renders() -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
    return {(seed, d): render(seed, d, SIZE) for seed in range(4) for d in DOMAINS}


def test_domain_registry():
    assert tuple(STYLES) == DOMAINS
    assert SOURCE_DOMAIN == "day" and SHIFTED_DOMAINS == ("night", "fog", "snow", "rain")
    others = ("dusk", "sepia", "neon", "watercolor", "pastel", "monochrome", "desert")
    assert set(DOMAINS) == {SOURCE_DOMAIN, *SHIFTED_DOMAINS, *others}


def test_render_types_and_determinism(renders):
    for (seed, domain), (image, label) in renders.items():
        assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
        assert label.shape == SIZE and label.dtype == np.uint8
        again = render(seed, domain, SIZE)
        np.testing.assert_array_equal(again[0], image)
        np.testing.assert_array_equal(again[1], label)
    assert not np.array_equal(renders[0, "day"][1], renders[1, "day"][1])  # seeds give different layouts


def test_label_is_domain_independent_and_image_is_not(renders):
    for seed in range(4):
        day_image, day_label = renders[seed, "day"]
        for domain in DOMAINS[1:]:
            image, label = renders[seed, domain]
            np.testing.assert_array_equal(label, day_label)
            assert np.abs(image.astype(np.int16) - day_image).mean() > 10, domain


def test_labels_cover_the_street_classes():
    seen = np.zeros(256, int)
    for seed in range(20):
        label = render(seed, "day", (128, 128))[1]
        values = np.unique(label)
        assert set(values.tolist()) <= set(range(NUM_CLASSES)) | {IGNORE_INDEX}
        assert (label == IGNORE_INDEX).mean() < 0.12  # ignore stays sparse
        seen[values] += 1
    for name in REQUIRED:
        assert seen[TRAIN_ID[name]] >= 3, name
    assert seen[TRAIN_ID["wall"]] + seen[TRAIN_ID["fence"]] >= 3


def test_shifted_domains_change_statistics_as_intended(renders):
    for seed in range(4):
        scene = _scene(seed, SIZE)
        day = renders[seed, "day"][0]
        sky, ignore = scene.label == TRAIN_ID["sky"], scene.label == IGNORE_INDEX
        far = (scene.depth > 30) & ~sky & ~ignore
        ground = np.isin(scene.label, [TRAIN_ID[n] for n in ("road", "sidewalk", "terrain")])

        night = renders[seed, "night"][0]
        assert _luma(night).mean() < 0.4 * _luma(day).mean()
        lit = scene.light > 0.5
        assert lit.any() and _luma(night)[lit].mean() > 2 * _luma(night).mean()  # lamps and windows glow

        fog = renders[seed, "fog"][0]
        if far.sum() > 50:
            assert _luma(fog)[far].std() < 0.6 * _luma(day)[far].std()
        assert _luma(fog)[sky].std() < 8  # the sky is a flat grey

        snow = renders[seed, "snow"][0]
        assert _luma(snow)[ground].mean() > _luma(day)[ground].mean() + 30

        rain = renders[seed, "rain"][0]
        assert _saturation(rain) < 0.5 * _saturation(day)
        assert _luma(rain).mean() < _luma(day).mean()

        assert _saturation(renders[seed, "monochrome"][0]) < 15


@pytest.mark.parametrize("size", [(96, 160), (100, 77), (17, 5), (1, 1)])
def test_odd_sizes(size):
    for domain in DOMAINS:
        image, label = render(3, domain, size)
        assert image.shape == (*size, 3) and label.shape == size


def test_unknown_domain_lists_valid_ones():
    with pytest.raises(ValueError, match="night") as info:
        render(0, "sunny")
    assert all(d in str(info.value) for d in DOMAINS)
    with pytest.raises(ValueError, match="fog"):
        SyntheticDataset("sunny")


def test_styles_are_extensible(monkeypatch):
    monkeypatch.setitem(STYLES, "inverted", lambda base, scene, rng: 1.0 - base)
    image, label = render(2, "inverted", SIZE)
    day, day_label = render(2, "day", SIZE)
    np.testing.assert_array_equal(label, day_label)
    assert abs(image.astype(int).mean() - (255 - day.astype(int).mean())) < 25  # day adds only mild jitter


def test_dataset_items():
    ds = SyntheticDataset("fog", length=3, size=SIZE, seed=2)
    assert len(ds) == 3 and ds.name == "synthetic:fog"
    image, label = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, *SIZE)
    assert label.dtype == torch.int64 and label.shape == SIZE
    ref_image, ref_label = render(2 * 1_000_003 + 1, "fog", SIZE)
    assert torch.equal(image, torch.from_numpy(ref_image).permute(2, 0, 1))
    assert torch.equal(label, torch.from_numpy(ref_label).long())
    assert torch.equal(ds[-1][1], ds[2][1])
    assert torch.equal(SyntheticDataset("night", length=3, size=SIZE, seed=2)[1][1], label)
    with pytest.raises(IndexError):
        ds[3]
