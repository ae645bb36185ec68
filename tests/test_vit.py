"""CLIP ViT image towers as segmentation backbones (famix.models.towers.vit): dense tokens against open_clip's
own forward, positional-embedding resizing, the restyle site, freeze presets, sizes, checkpoints, export,
weight loading. Random weights, the tiny-vit config (patch 8, 5 blocks)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from PIL import Image

from famix.cli import main
from famix.config import ModelConfig
from famix.engine.checkpoint import load_model_state, load_segmenter, save_checkpoint
from famix.engine.exported import load_exported
from famix.models.build import build_segmenter
from famix.models.clip import build_clip, get_clip_config
from famix.models.segmenter import SegmentationNetwork
from famix.models.towers.vit import embed_tokens, interpolate_pos_embed, neck_steps, tokens_to_map
from famix.settings import ExportSettings
from famix.stages.convert import infer_model_config
from famix.stages.export import compare, export_model

PATCH = 8  # tiny-vit's


def vit_cfg(**kwargs) -> ModelConfig:
    return ModelConfig(
        backbone="tiny-vit", output_stride=PATCH, num_classes=5, class_names=list("abcde"), **kwargs
    )


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def open_clip_tokens(visual, x: torch.Tensor) -> torch.Tensor:
    """open_clip's own patch tokens (after ln_post, class token dropped): [B, h * w, W]."""
    visual.output_tokens = True
    try:
        with torch.no_grad():
            return visual(x)[1]
    finally:
        visual.output_tokens = False


def dense_tokens(model: SegmentationNetwork, x: torch.Tensor) -> torch.Tensor:
    """The segmenter's "out" map as tokens [B, h * w, W]."""
    with torch.no_grad():
        return model.features(x)["out"].flatten(2).transpose(1, 2)


def test_dense_tokens_equal_open_clip_at_the_native_size():
    visual = build_clip("tiny-vit", seed=0).visual
    model = SegmentationNetwork(visual, 5, PATCH).eval()  # the same module, used in place
    size = visual.image_size[0]
    x = images(2, 3, size, size)
    tokens = dense_tokens(model, x)
    assert tokens.shape == (2, (size // PATCH) ** 2, visual.conv1.out_channels)
    assert torch.equal(tokens, open_clip_tokens(visual, x))


@pytest.mark.parametrize("hw", [(48, 40), (16, 24)])
def test_dense_tokens_at_another_size_equal_open_clip_built_for_it(hw):
    """Against open_clip's VisionTransformer built with image_size=hw, given the resized embedding."""
    clip = build_clip("tiny-vit", seed=0)
    state = clip.visual.state_dict()
    model = SegmentationNetwork(clip.visual, 5, PATCH).eval()
    cfg = get_clip_config("tiny-vit")
    cfg["vision_cfg"]["image_size"] = list(hw)
    other = CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=cfg["quick_gelu"]).visual
    grid = (hw[0] // PATCH, hw[1] // PATCH)
    state["positional_embedding"] = interpolate_pos_embed(state["positional_embedding"], grid)
    other.load_state_dict(state)
    x = images(2, 3, *hw, seed=1)
    torch.testing.assert_close(dense_tokens(model, x), open_clip_tokens(other.eval(), x), rtol=0, atol=1e-6)


def cubic_matrix(n_out: int, n_in: int, a: float = -0.75) -> torch.Tensor:
    """[n_out, n_in] weights of 1-D cubic convolution (Keys, a = -0.75), half-pixel centres (scale
    n_in / n_out), indices clamped at the edges: bicubic, align_corners=False, no antialiasing."""

    def kernel(t: float) -> float:
        t = abs(t)
        if t <= 1:
            return ((a + 2) * t - (a + 3)) * t * t + 1
        return a * (((t - 5) * t + 8) * t - 4) if t < 2 else 0.0

    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        for j in range(math.floor(src) - 1, math.floor(src) + 3):
            m[i, min(max(j, 0), n_in - 1)] += kernel(src - j)
    return m


@pytest.mark.parametrize("grid", [(6, 5), (3, 2), (4, 7)])
def test_interpolate_pos_embed_is_bicubic_on_the_grid_only(grid):
    g, width = 4, 3
    pos = images(1 + g * g, width, seed=2)
    out = interpolate_pos_embed(pos, grid)
    assert out.shape == (1 + grid[0] * grid[1], width)
    assert torch.equal(out[0], pos[0])  # the class position is left alone
    planes = pos[1:].double().reshape(g, g, width).permute(2, 0, 1)  # [W, g, g]
    expected = cubic_matrix(grid[0], g) @ planes @ cubic_matrix(grid[1], g).T  # [W, h, w]
    torch.testing.assert_close(out[1:].double(), expected.flatten(1).T, rtol=0, atol=1e-5)
    assert torch.equal(interpolate_pos_embed(pos, (g, g)), pos)  # native size: bit for bit


def test_restyle_applies_to_the_patch_embeddings_and_feeds_both_branches():
    """The style map is conv1's output; restyled once, it feeds the blocks, so both the head's low-level
    map (block ceil(L/4) through the neck) and the deep map; written out block by block here."""
    model = build_segmenter(vit_cfg()).eval()
    v = model.backbone
    x = images(2, 3, 48, 40, seed=3)
    scale = torch.linspace(-1.5, 1.0, model.style_channels).view(1, -1, 1, 1)
    calls = []

    def restyle(f):
        calls.append(f.clone())
        return f * scale - 0.2  # signed values pass unclamped

    blocks = v.transformer.resblocks
    low_block = math.ceil(len(blocks) / 4) - 1  # block ceil(L/4), 1-based
    with torch.no_grad():
        z = restyle(v.conv1(x))  # [B, W, 6, 5]
        tokens, low = embed_tokens(v, z), None
        for i, block in enumerate(blocks):
            tokens = block(tokens)
            if i == low_block:
                low = model.neck(tokens_to_map(tokens, z.shape[-2:]))
        out = tokens_to_map(v.ln_post(tokens), z.shape[-2:])
        expected = F.interpolate(model.classifier(low, out), size=x.shape[-2:], mode="bilinear")
        calls.clear()
        got = model(x, restyle=restyle)
        feats, plain = model.features(x, restyle), model.features(x)
    assert len(calls) == 2 and torch.equal(calls[0], model.style_features(x))  # once per call
    low_channels, _ = model.family.channels(v)  # the head's low-level input (the neck's output)
    assert feats["low"].shape == (2, low_channels, 12, 10) and feats["out"].shape[-2:] == (6, 5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for key in ("low", "out"):
        assert not torch.allclose(feats[key], plain[key], atol=1e-3), key
    assert model.style_relu is False and build_segmenter(ModelConfig(backbone="tiny-rn")).style_relu


def own_statistics(f: torch.Tensor, grid: int = 2) -> torch.Tensor:
    """Each of grid x grid patches of f [B, C, H, W] normalised and given back its own mean and std."""
    rows = []
    for band in f.chunk(grid, dim=2):
        cells = []
        for cell in band.chunk(grid, dim=3):
            mu, sigma = cell.mean((2, 3), keepdim=True), cell.std((2, 3), keepdim=True) + 1e-6
            cells.append((cell - mu) / sigma * sigma + mu)
        rows.append(torch.cat(cells, dim=3))
    return torch.cat(rows, dim=2)


def test_restyle_with_the_maps_own_statistics_is_the_identity():
    model = build_segmenter(vit_cfg()).eval()
    x = images(2, 3, 48, 40, seed=4)
    with torch.no_grad():
        plain = model(x)
        assert (model.style_features(x) < 0).any()  # signed: a ReLU anywhere would show
        assert torch.equal(model(x, restyle=lambda f: f), plain)
        torch.testing.assert_close(model(x, restyle=own_statistics), plain, rtol=1e-5, atol=1e-5)


def expected_trainable(model: SegmentationNetwork, preset: str) -> set[str]:
    """Backbone parameter names ``preset`` trains, from the tower's block count L."""
    layers = len(model.backbone.transformer.resblocks)
    blocks = {
        "last-block": [layers - 1],
        "layer4": list(range(layers - math.ceil(layers / 4), layers)),
        "none": list(range(layers)),
        "backbone": [],
    }[preset]
    names = [n for n, _ in model.backbone.named_parameters()]
    if preset == "none":
        return {f"backbone.{n}" for n in names if n != "proj"}
    prefixes = tuple(f"transformer.resblocks.{i}." for i in blocks) + (("ln_post.",) if blocks else ())
    return {f"backbone.{n}" for n in names if n.startswith(prefixes)}


@pytest.mark.parametrize("preset", ["last-block", "layer4", "none", "backbone"])
def test_freeze_presets_train_exactly_the_expected_parameters(preset):
    model = build_segmenter(vit_cfg(freeze=preset))
    layers = len(model.backbone.transformer.resblocks)
    assert math.ceil(layers / 4) > 1  # so that layer4 and last-block differ
    head = {n for n, _ in model.named_parameters() if n.startswith(("neck.", "classifier."))}
    assert head and {n for n, _ in model.named_parameters()} - head == {
        f"backbone.{n}" for n, _ in model.backbone.named_parameters()
    }
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected_trainable(model, preset) | head
    assert {id(p) for p in model.head_parameters()} == {
        id(p) for n, p in model.named_parameters() if n in head
    }
    model.train()
    model(images(2, 3, 32, 40, seed=5)).sum().backward()
    # every trainable parameter gets a gradient (nothing unused for DDP), no frozen one does
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable
    for i, block in enumerate(model.backbone.transformer.resblocks):  # frozen units stay in eval
        assert block.training == any(n.startswith(f"backbone.transformer.resblocks.{i}.") for n in trainable)
    assert all(m.training for m in model.neck.modules())


@pytest.mark.parametrize("hw", [(48, 40), (50, 37)])
def test_logits_have_the_input_size(hw):
    model = build_segmenter(vit_cfg()).eval()
    x = images(2, 3, *hw, seed=6)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 5, *hw)
        padded = F.pad(x, (0, -hw[1] % PATCH, 0, -hw[0] % PATCH))  # sides not multiples of P: zero-padded
        assert torch.equal(logits, model(padded)[..., : hw[0], : hw[1]])
    if hw[0] % PATCH:
        with pytest.raises(
            ValueError, match="vit segmenter.s features need sides that are multiples of 8, got 50x37"
        ):
            model.features(x)


def test_output_stride_and_patch_sizes(tmp_path):
    with pytest.raises(ValueError, match="model.output_stride=16 .* set model.output_stride=8"):
        build_segmenter(ModelConfig(backbone="tiny-vit"))
    assert [neck_steps(p) for p in (4, 8, 14, 16, 32)] == [0, 1, 2, 2, 3]
    with pytest.raises(ValueError, match="patch size 2"):
        neck_steps(2)
    cfg = get_clip_config("tiny-vit")  # ViT-L/14's patch: low-level map at stride 14 / 4 = 3.5
    cfg["vision_cfg"].update(image_size=28, patch_size=14, layers=2)
    path = tmp_path / "vit14.json"
    path.write_text(json.dumps(cfg))
    model = build_segmenter(ModelConfig(backbone=str(path), output_stride=14)).eval()
    with torch.no_grad():
        feats = model.features(images(1, 3, 42, 56))
        assert feats["low"].shape[-2:] == (12, 16) and feats["out"].shape[-2:] == (3, 4)
        assert model(images(1, 3, 40, 50)).shape == (1, 19, 40, 50)


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    cfg = vit_cfg()
    path = tmp_path_factory.mktemp("vit") / "best.pt"
    model = build_segmenter(cfg, seed=0)
    save_checkpoint(
        path,
        model_state=model.state_dict(),
        config={"model": vars(cfg), "run": {"amp": "off"}},
        cur_itrs=0,
        best_score=0,
    )
    return path


def test_checkpoints_load_and_mismatches_are_clear(vit_checkpoint, checkpoint):
    model, cfg = load_segmenter(vit_checkpoint)
    assert cfg.backbone == "tiny-vit" and model.family.name == "vit" and not model.training
    x = images(1, 3, 32, 48, seed=7)
    fresh = build_segmenter(vit_cfg(), seed=1).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x), model(x))
        load_model_state(fresh, model.state_dict())
        assert torch.equal(fresh(x), model(x))
    rn_state = load_segmenter(checkpoint)[0].state_dict()  # a tiny-rn checkpoint
    with pytest.raises(ValueError, match="does not fit this model.*model.backbone"):
        load_model_state(model, rn_state, "rn.pt")
    other = build_segmenter(
        ModelConfig(backbone="tiny-vit", output_stride=8, num_classes=7, class_names=list("abcdefg"))
    )
    with pytest.raises(ValueError, match="predicts 7 classes.*num_classes=7"):
        load_model_state(model, other.state_dict(), "ckpt.pt")
    with pytest.raises(ValueError, match="CLIP ViT backbone"):
        infer_model_config(model.state_dict())


def test_onnx_export_matches_eager(vit_checkpoint, tmp_path):
    for name in ("onnxruntime", "onnx", "onnxscript"):
        pytest.importorskip(name)
    model, cfg = load_segmenter(vit_checkpoint)
    out = tmp_path / "vit.onnx"
    check = export_model(
        model, cfg, out, ExportSettings("onnx", (32, 48))
    )  # a 4x6 grid: the embedding is resized
    assert check.max_abs_diff <= 1e-5 and check.agreement == 100.0
    onnx_model = load_exported(out, "onnx")
    assert onnx_model.metadata["output_stride"] == "8" and onnx_model.metadata["backbone"] == "tiny-vit"
    again = compare(model, onnx_model, [images(1, 3, 32, 48, seed=8)])
    assert again.max_abs_diff <= 1e-5


def test_predict_on_an_image_size_that_is_no_multiple_of_the_patch(vit_checkpoint, tmp_path):
    image = tmp_path / "x.png"
    noise = np.random.default_rng(0).integers(0, 256, (37, 50, 3), dtype=np.uint8)
    Image.fromarray(noise).save(image)
    main(["predict", str(vit_checkpoint), str(image), "--out", str(tmp_path / "out")])
    assert np.asarray(Image.open(tmp_path / "out" / "x_trainid.png")).shape == (37, 50)


def test_clip_state_dict_round_trip_and_mismatch(tmp_path):
    ref = build_clip("tiny-vit", seed=0)
    path = tmp_path / "vit.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    loaded = build_clip("tiny-vit", weights=str(path), seed=1)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in ref.state_dict().items())
    # CLIP's visual.* names are the segmenter's backbone.* names
    model = build_segmenter(vit_cfg(weights=str(path)), seed=1)
    backbone = model.backbone.state_dict()
    assert all(torch.equal(v, backbone[k]) for k, v in ref.visual.state_dict().items())
    with pytest.raises(ValueError, match="do not fit backbone config 'tiny-rn'.*ViT-B-16-quickgelu"):
        build_clip("tiny-rn", weights=str(path))


def test_attention_runs_through_scaled_dot_product_attention(monkeypatch):
    """Training forwards reach F.scaled_dot_product_attention once per block (flash / memory-efficient
    kernels on CUDA), not a hand-written softmax(QK^T)V."""
    model = build_segmenter(vit_cfg(freeze="none"), seed=0).train()
    calls, sdpa = [], F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    model(images(2, 3, 32, 40)).sum().backward()
    assert len(calls) == len(model.backbone.transformer.resblocks)
