"""CLIP backbone construction and weight loading, on the tiny-rn config only (no downloads)."""

import copy
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import open_clip
import pytest
import safetensors.torch
import torch

from famix.models.clip import (
    CLIP_CONFIGS,
    build_clip,
    clip_preprocess_size,
    load_clip_state_dict,
    weights_fingerprint,
)
from famix.models.towers import FAMILIES


@pytest.fixture(scope="module")
def ref():
    return build_clip("tiny-rn", seed=0)


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _features(model, x):
    with torch.no_grad():
        return model.visual(x)


def test_each_family_owns_its_open_clip_names():
    """CLIP_CONFIGS offers exactly the tower families' open_clip names (``Tower.clip_names``), each built
    from the config its family names (OpenAI's QuickGELU for a ResNet name), plus the tiny test configs."""
    offered = [name for family in FAMILIES for name in family.clip_names]
    tiny = ["tiny-rn", "tiny-clip", "tiny-vit", "tiny-vit-clip", "tiny-eva", "tiny-convnext"]
    assert list(CLIP_CONFIGS) == offered + tiny
    assert [f.name for f in FAMILIES if "RN50" in f.clip_names] == ["resnet"]
    assert [f.name for f in FAMILIES if "ViT-L-14-quickgelu" in f.clip_names] == ["vit"]
    assert [f.name for f in FAMILIES if "EVA02-L-14" in f.clip_names] == ["eva"]
    assert [f.name for f in FAMILIES if "convnext_large_d_320" in f.clip_names] == ["convnext"]
    for family in FAMILIES:
        for name in family.clip_names:
            assert CLIP_CONFIGS[name] == open_clip.get_model_config(family.clip_config(name)), name
    for name in ("RN50", "RN101", "RN50x4", "ViT-B-16-quickgelu"):
        assert CLIP_CONFIGS[name]["quick_gelu"] is True, name
    assert CLIP_CONFIGS["ViT-B-16"].get("quick_gelu", False) is False


def test_configs_and_seed(ref):
    assert {"RN50", "RN101", "RN50x4", "tiny-rn"} <= set(CLIP_CONFIGS)
    assert CLIP_CONFIGS["RN50"]["quick_gelu"] is True
    assert clip_preprocess_size(ref) == 64
    assert not ref.training and next(ref.parameters()).dtype == torch.float32
    state = torch.random.get_rng_state()
    again = build_clip("tiny-rn", seed=0)
    assert torch.equal(state, torch.random.get_rng_state())  # seeding does not touch the global RNG
    other = build_clip("tiny-rn", seed=1)
    a, b, c = ref.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.conv1.weight"], c["visual.conv1.weight"])
    with pytest.raises(ValueError, match="tiny-rn"):
        build_clip("RN9000")
    assert weights_fingerprint(None) == "random" and weights_fingerprint("openai") == "openai"


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "nested"])
def test_state_dict_formats(ref, image, tmp_path, fmt):
    sd = ref.state_dict()
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "pt":
        path = tmp_path / "w.pt"
        torch.save(sd, path)
    else:  # DDP checkpoint: nested under "state_dict" with "module." prefixes, plus non-tensor entries
        path = tmp_path / "w.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    model = build_clip("tiny-rn", weights=str(path), seed=1)
    assert torch.equal(_features(model, image), _features(ref, image))
    fp = weights_fingerprint(str(path))
    assert fp.startswith("sha256:") and len(fp) == len("sha256:") + 16


def test_openai_style_torchscript_fp16(ref, image, tmp_path):
    half = copy.deepcopy(ref).half()
    # OpenAI archives carry these scalars besides the weights; the loader must drop them.
    # (open_clip keeps context_length/vocab_size as plain ints, unused by forward, so swap them for buffers.)
    for key, value in (("input_resolution", 64), ("context_length", 16), ("vocab_size", 49408)):
        half.__dict__.pop(key, None)
        half.register_buffer(key, torch.tensor(value))
    path = tmp_path / "RN-tiny.pt"
    torch.jit.script(half).save(str(path))
    archive = torch.jit.load(str(path), map_location="cpu").state_dict()
    extras = {"input_resolution", "context_length", "vocab_size", "attn_mask"}
    assert set(archive) == set(ref.state_dict()) | extras
    assert archive["visual.conv1.weight"].dtype == torch.float16

    sd = load_clip_state_dict(path)
    assert set(sd) == set(ref.state_dict()) and sd["visual.conv1.weight"].dtype == torch.float32
    model = build_clip("tiny-rn", weights=str(path), seed=1)
    rounded = copy.deepcopy(ref).half().float()
    assert next(model.parameters()).dtype == torch.float32
    assert torch.equal(_features(model, image), _features(rounded, image))


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope" / "RN50.pt")
    with pytest.raises(FileNotFoundError, match="nope") as err:
        build_clip("tiny-rn", weights=path)
    assert ".safetensors" in str(err.value)


def test_mismatched_weights(ref, tmp_path):
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    del sd["visual.attnpool.c_proj.bias"]
    sd["visual.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(ValueError) as err:
        build_clip("tiny-rn", weights=str(path))
    msg = str(err.value)
    for part in (
        "bad.safetensors",
        "tiny-rn",
        "attnpool.c_proj.bias",
        "visual.conv1.weight",
        "model.backbone",
    ):
        assert part in msg
