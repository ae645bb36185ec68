"""Backbone dilation, segmenter structure, official checkpoint compatibility, freezing."""

import typing
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from famix.config import ModelConfig
from famix.engine.checkpoint import load_model_state
from famix.models.build import SegmenterSpec, build_segmenter
from famix.models.freeze import apply_freeze
from famix.models.towers.resnet import dilation_pattern

KEYS = Path(__file__).parent / "data" / "official_checkpoint_keys_rn50.txt"


def test_model_config_provides_what_build_segmenter_reads():
    """``SegmenterSpec`` (models/ cannot import the config) names ModelConfig fields with their types."""
    config = typing.get_type_hints(ModelConfig)
    spec = typing.get_type_hints(SegmenterSpec)
    assert set(spec) <= {f.name for f in fields(ModelConfig)}
    assert {name: config[name] for name in spec} == spec


def loop_pattern(blocks, os_, pattern):
    """The rule as written in the method notes, one block at a time."""
    dilated = {32: [], 16: [4], 8: [3, 4]}[os_]
    result, prev = [], 1
    for layer, n in enumerate(blocks, start=1):
        if layer not in dilated:
            result.append([prev for _ in range(n)])
            continue
        new = prev * 2
        row = []
        for i in range(n):
            if pattern == "official":
                row.append(1 if i == 0 else new if i == n - 1 else prev)
            else:
                row.append(prev if i == 0 else new)
        result.append(row)
        prev = new
    return result


@pytest.mark.parametrize("blocks", [[3, 4, 6, 3], [3, 4, 23, 3], [4, 6, 10, 6], [1, 1, 2, 2], [2, 3, 4, 5]])
@pytest.mark.parametrize("os_", [8, 16, 32])
@pytest.mark.parametrize("pattern", ["official", "torchvision"])
def test_dilation_pattern_matches_rule(blocks, os_, pattern):
    assert dilation_pattern(blocks, os_, pattern) == loop_pattern(blocks, os_, pattern)


def test_official_rn50_patterns():
    assert dilation_pattern([3, 4, 6, 3], 16)[3] == [1, 1, 2]
    assert dilation_pattern([3, 4, 6, 3], 8)[2:] == [[1, 1, 1, 1, 1, 2], [1, 2, 4]]


@pytest.mark.parametrize("os_", [8, 16, 32])
def test_segmenter_shapes_and_dilations(os_):
    model = build_segmenter(
        ModelConfig(backbone="tiny-rn", output_stride=os_, num_classes=5, class_names=list("abcde"))
    )
    model.eval()
    x = torch.randn(2, 3, 70, 90)
    feats = model.features(x)
    assert feats["low"].shape[-2:] == (17, 22)
    assert feats["out"].shape[-2] == -(-70 // os_) or feats["out"].shape[-2] == 70 // os_
    assert model(x).shape == (2, 5, 70, 90)
    got = [[b.conv2.dilation[0] for b in getattr(model.backbone, f"layer{i}")] for i in range(1, 5)]
    assert got == dilation_pattern([1, 1, 2, 2], os_)


def read_official_keys():
    shapes = {}
    for line in KEYS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape, dtype = line.split("\t")
        shapes[name] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype)
    return shapes


def test_official_rn50_state_dict_loads_exactly():
    official = read_official_keys()
    model = build_segmenter(ModelConfig(backbone="RN50"))
    state = {
        n: (torch.randn(s) if d == "float32" else torch.zeros(s, dtype=torch.int64))
        for n, (s, d) in official.items()
    }
    load_model_state(model, state, "official keys")  # raises on anything missing, unexpected or misshapen
    assert set(model.state_dict()) == set(official)
    torch.testing.assert_close(
        model.state_dict()["classifier.classifier.3.weight"], state["classifier.classifier.3.weight"]
    )


def test_checkpoint_for_other_class_count_is_a_clear_error():
    model = build_segmenter(ModelConfig(backbone="tiny-rn"))
    other = build_segmenter(ModelConfig(backbone="tiny-rn", num_classes=7, class_names=list("abcdefg")))
    with pytest.raises(ValueError, match="predicts 7 classes.*num_classes=7"):
        load_model_state(model, other.state_dict(), "ckpt.pt")


@pytest.mark.parametrize(
    "preset,trainable",
    [
        ("last-block", ["layer4.1"]),
        ("layer4", ["layer4.0", "layer4.1"]),
        ("none", ["stem", "layer1", "layer2", "layer3", "layer4.0", "layer4.1"]),
        ("backbone", []),
    ],
)
def test_freeze_presets_and_frozen_units_stay_in_eval(preset, trainable):
    model = build_segmenter(ModelConfig(backbone="tiny-rn", freeze=preset))
    all_units = ["stem", "layer1", "layer2", "layer3", "layer4.0", "layer4.1"]
    assert model.frozen_units() == [u for u in all_units if u not in trainable]
    model.train()
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            unit = name.split(".")[1] if name.startswith("backbone.layer") else "stem"
            if name.startswith("backbone.layer4"):
                unit = ".".join(name.split(".")[1:3])
            if name.startswith("classifier"):
                assert m.training
            else:
                assert m.training == (unit in trainable), name
    assert all(p.requires_grad for p in model.classifier.parameters())


def test_frozen_bn_statistics_do_not_move_in_training():
    model = build_segmenter(ModelConfig(backbone="tiny-rn"))
    apply_freeze(model, "last-block")
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    model.train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    after = model.state_dict()
    for k, v in before.items():
        moved = not torch.equal(v, after[k])
        assert moved == (k.startswith("backbone.layer4.1") or k.startswith("classifier")), k


def test_restyle_hook_feeds_both_the_head_and_layer2():
    """The mixing point: ``forward(x, restyle)`` restyles layer1 once, and that restyled map is both the
    head's low-level input and layer2's input (written out stage by stage here)."""
    import torch.nn.functional as F

    model = build_segmenter(ModelConfig(backbone="tiny-rn", num_classes=5, class_names=list("abcde"))).eval()
    x = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    shift = torch.linspace(0.5, 2.0, model.style_channels).view(1, -1, 1, 1)
    calls = []

    def restyle(f):
        calls.append(f.shape)
        return f * shift + 0.3

    v = model.backbone
    with torch.no_grad():
        low = restyle(v.layer1(v.stem(x)))
        deep = v.layer4(v.layer3(v.layer2(low)))
        expected = F.interpolate(model.classifier(low, deep), size=x.shape[-2:], mode="bilinear")
        calls.clear()
        out = model(x, restyle=restyle)
        plain = model(x)
    assert len(calls) == 1 and calls[0][1] == model.style_channels  # once, on layer1's output
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, plain, atol=1e-3)  # the restyle changed the result
    with torch.no_grad():  # restyling only the head's input (or only layer2's) would not match
        only_head = F.interpolate(
            model.classifier(low, v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))),
            size=x.shape[-2:],
            mode="bilinear",
        )
    assert not torch.allclose(out, only_head, atol=1e-3)
