"""EVA02-CLIP and ConvNeXt-CLIP towers (famix.models.towers.eva / convnext) on tiny random towers: dense
features against open_clip's and timm's own trunks (EVA positions at other sizes against timm's
dynamic-size Eva), the CLIP tail against encode_image, the identity restyle, PIN against a per-patch loop,
freeze presets, the real paper-size towers built at random, and the CLI end to end."""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from famix.cli import main
from famix.config import ModelConfig, load_config
from famix.engine.checkpoint import load_checkpoint, load_segmenter
from famix.engine.exported import load_exported
from famix.models.build import build_segmenter
from famix.models.clip import build_clip, clip_normalization
from famix.models.freeze import FREEZE_PRESETS
from famix.models.segmenter import SegmentationNetwork
from famix.models.towers import (
    TINY_TRUNK_PREFIX,
    style_channels,
    style_features,
    style_grid,
    style_relu,
    style_tail,
    tower,
)
from famix.models.towers.tiny import famix_tiny_eva
from famix.style.bank import StyleBank
from famix.style.pin import PinSGD, pin_optimize, split_patches
from famix.style.stats import grid_edges, normalize_patches, patch_stats

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "famix" / "configs"
STRIDE = {"tiny-eva": 8, "tiny-convnext": 32}  # each tiny tower's output stride (patch size; 32)


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def segmenter(name: str, **kwargs) -> SegmentationNetwork:
    cfg = ModelConfig(backbone=name, output_stride=STRIDE[name], num_classes=5, class_names=list("abcde"))
    return build_segmenter(ModelConfig(**{**vars(cfg), **kwargs}), seed=0)


def captured(module: nn.Module, run) -> torch.Tensor:
    """The input ``module`` received while ``run()`` ran (a forward pre-hook)."""
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen[-1]


def test_eva_dense_features_equal_the_trunk_at_the_native_size():
    visual = build_clip("tiny-eva", seed=0).visual
    model = SegmentationNetwork(copy.deepcopy(visual), 5, 8).eval()
    x = images(2, 3, 32, 32, seed=1)
    trunk = visual.trunk
    low_block = math.ceil(len(trunk.blocks) / 4) - 1
    seen = []
    handle = trunk.blocks[low_block].register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        tokens = trunk.forward_features(x)  # [B, 1 + 16, W]: open_clip's trunk, blocks and final norm
    handle.remove()
    with torch.no_grad():
        out = model.features(x)["out"]  # [B, W, 4, 4]
    assert torch.equal(out.flatten(2).transpose(1, 2), tokens[:, 1:])
    # the low-level map (before the neck) is the tokens after block ceil(L/4), as a map
    low = captured(model.neck, lambda: model.features(x))
    assert torch.equal(low.flatten(2).transpose(1, 2), seen[0][:, 1:])


@pytest.mark.parametrize("rope", [True, False])
@pytest.mark.parametrize("hw", [(48, 40), (24, 56), (16, 16), (8, 24), (32, 32)])
def test_eva_positions_at_other_sizes_equal_timm_dynamic_size_eva(hw, rope):
    """At sizes other than the native grid, famix's EVA (absolute positions resampled, RoPE at rescaled
    coordinates) equals timm's own Eva built for dynamic input sizes, with the same weights; also for a
    trunk without RoPE and with post-norm blocks, as EVA02-E-14's."""
    visual = build_clip("tiny-eva", seed=0).visual
    kind = {} if rope else {"use_rot_pos_emb": False, "use_post_norm": True}
    visual.trunk = famix_tiny_eva(num_classes=32, global_pool="token", **kind)
    reference = famix_tiny_eva(dynamic_img_size=True, num_classes=32, global_pool="token", **kind).eval()
    reference.load_state_dict(visual.trunk.state_dict())
    assert (visual.trunk.rope is None) != rope
    model = SegmentationNetwork(visual, 5, 8).eval()
    x = images(2, 3, *hw, seed=hw[0] + hw[1])
    with torch.no_grad():
        ours = model.features(x)["out"].flatten(2).transpose(1, 2)
        theirs = reference.forward_features(x)[:, 1:]
    assert torch.equal(ours, theirs)


def test_convnext_dense_features_equal_the_trunk():
    visual = build_clip("tiny-convnext", seed=0).visual
    model = SegmentationNetwork(copy.deepcopy(visual), 5, 32).eval()
    x = images(2, 3, 64, 96, seed=2)
    with torch.no_grad():
        first, last = visual.trunk.forward_intermediates(x, indices=[0, 3], intermediates_only=True)
        feats = model.features(x)
        ours_first = model.style_features(x)
    assert torch.equal(ours_first, first) and ours_first.shape == (2, 16, 16, 24)  # stride 4, stage 0
    assert torch.equal(feats["low"], first)  # the style site is the low-level map
    assert torch.equal(feats["out"], visual.trunk.forward_features(x)) and torch.equal(feats["out"], last)
    assert feats["out"].shape == (2, 48, 2, 3)  # stride 32


@pytest.mark.parametrize("name", ["tiny-eva", "tiny-convnext"])
def test_tail_of_an_unrestyled_input_equals_encode_image(name):
    clip = build_clip(name, seed=0)
    size = tower(clip.visual).input_size(clip.visual)
    x = images(3, 3, size, size, seed=3)
    with torch.no_grad():
        z = style_features(clip.visual, x)
        assert z.shape[1:] == (style_channels(clip.visual), style_grid(clip.visual), style_grid(clip.visual))
        torch.testing.assert_close(style_tail(clip.visual, z), clip.encode_image(x))
    assert style_relu(clip.visual) is False  # both sites are signed (no ReLU after them)


@pytest.mark.parametrize("name", ["tiny-eva", "tiny-convnext"])
def test_identity_restyle_leaves_the_output_unchanged(name):
    model = segmenter(name).eval().double()  # float64: the own-statistics round trip is exact to ~1e-15
    x = images(2, 3, 40, 72, seed=4).double()
    with torch.no_grad():
        plain = model(x)
        assert torch.equal(model(x, restyle=lambda f: f), plain)

        def own_stats(f):  # AdaIN to the map's own per-channel statistics
            mu, sigma = f.mean((2, 3), keepdim=True), f.std((2, 3), keepdim=True) + 1e-12
            return (f - mu) / sigma * sigma + mu

        torch.testing.assert_close(model(x, restyle=own_stats), plain)
        assert not torch.allclose(model(x, restyle=lambda f: f * 2), plain)  # the hook is on the path


def reference_tail(visual: nn.Module) -> nn.Module:
    """open_clip's own forward with everything up to the style site taken out (the reference tail)."""
    tail = copy.deepcopy(visual)
    if tower(visual).name == "vit":
        tail.conv1 = nn.Identity()
    elif tower(visual).name == "eva":
        tail.trunk.patch_embed.proj = nn.Identity()
        tail.trunk.patch_embed.strict_img_size = False
        tail.trunk.patch_embed.patch_size = (1, 1)  # (its size checks only: the tail takes the token grid)
    else:
        tail.trunk.stem, tail.trunk.stages[0] = nn.Identity(), nn.Identity()
    return tail


def pin_alone_sgd(tail, patch, mu, sigma, text, pool, steps, lr, momentum, weight_decay):
    """One patch [1, C, h, w] optimised on its own loss 1 - cos, SGD with momentum and weight decay written
    out (torch's rule: g += wd * p; buf = g at the first step, else momentum * buf + g; p -= lr * buf), the
    restyle without ReLU: sigma * patch + mu."""
    params, bufs = [mu.clone(), sigma.clone()], [None, None]
    for _ in range(steps):
        m, s = (p.requires_grad_(True) for p in params)
        z = F.adaptive_avg_pool2d(s[None, :, None, None] * patch + m[None, :, None, None], pool)
        loss = 1 - F.cosine_similarity(tail(z), text[None])[0]
        grads = torch.autograd.grad(loss, [m, s])
        with torch.no_grad():
            for k, (p, g) in enumerate(zip(params, grads, strict=True)):
                g = g + weight_decay * p
                bufs[k] = g if bufs[k] is None else momentum * bufs[k] + g
                params[k] = p - lr * bufs[k]
    return [p.detach() for p in params]


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-eva", "tiny-convnext"])
@pytest.mark.parametrize("b,h,w,g", [(2, 14, 12, 3), (1, 9, 7, 2)])
def test_pin_is_per_patch_and_matches_a_loop(name, b, h, w, g):
    """pin_optimize on each signed-site tower (no ReLU, inferred from the tower) == each patch alone, through
    open_clip's own forward, patches of several sizes pooled to the tail's grid."""
    visual = build_clip(name, seed=0).visual
    gen = torch.Generator().manual_seed(h * 10 + w)
    f = torch.randn(b, style_channels(visual), h, w, generator=gen) * 2 - 0.5  # signed, as both sites
    mu, sigma = patch_stats(f, g)
    c = f.shape[1]
    flat_mu, flat_sigma = (t.permute(0, 2, 3, 1).reshape(-1, c) for t in (mu, sigma))
    f_norm = normalize_patches(f, mu, sigma)
    text = F.normalize(torch.randn(b * g * g, 32, generator=gen), dim=-1)
    pool, sgd = style_grid(visual), PinSGD(3, 0.5, 0.9, 1e-4)
    groups = split_patches(f_norm, g)
    assert len({tuple(p.shape[2:]) for p, _ in groups}) > 1  # patches of several shapes
    mu_s, sigma_s, _, order = pin_optimize(visual, groups, flat_mu, flat_sigma, text, pool, sgd)
    tail = reference_tail(visual)
    rows, cols = grid_edges(h, g), grid_edges(w, g)
    for k, p in enumerate(order.tolist()):
        bi, rest = divmod(p, g * g)
        i, j = divmod(rest, g)
        patch = f_norm[bi : bi + 1, :, rows[i] : rows[i + 1], cols[j] : cols[j + 1]]
        m, s = pin_alone_sgd(tail, patch, flat_mu[p], flat_sigma[p], text[p], pool, *sgd)
        torch.testing.assert_close(mu_s[k], m, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(sigma_s[k], s, rtol=1e-4, atol=1e-5)


def documented_trainable(name: str, preset: str, names: list[str]) -> set[str]:
    """The backbone parameters each preset trains, written from FREEZE_PRESETS' text (never the CLIP
    projection: open_clip's head, the trunk's head and fc_norm)."""
    projection = ("backbone.head.", "backbone.trunk.head.", "backbone.trunk.fc_norm.")
    names = [n for n in names if n.startswith("backbone.") and not n.startswith(projection)]
    if name == "tiny-eva":  # 4 blocks: last-block = block 3, layer4 = the last ceil(4 / 4) = 1 block
        last = ("backbone.trunk.blocks.3.", "backbone.trunk.norm.")
        chosen = {"last-block": last, "layer4": last}
    else:  # stages.3 has 2 blocks (and a downsampling)
        chosen = {
            "last-block": ("backbone.trunk.stages.3.blocks.1.",),
            "layer4": ("backbone.trunk.stages.3.",),
        }
    chosen.update(none=("backbone.",), backbone=())
    return {n for n in names if chosen[preset] and n.startswith(chosen[preset])}


@pytest.mark.parametrize("name", ["tiny-eva", "tiny-convnext"])
@pytest.mark.parametrize("preset", list(FREEZE_PRESETS))
def test_freeze_presets_train_the_documented_parameters(name, preset):
    model = segmenter(name, freeze=preset)
    names = [n for n, _ in model.named_parameters()]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")}
    assert trainable == documented_trainable(name, preset, names)
    model.train()
    x, target = images(2, 3, 64, 64, seed=5), torch.randint(0, 5, (2, 64, 64))
    F.cross_entropy(model(x, restyle=lambda f: f * 1.5 + 0.1), target).backward()
    # every trainable parameter gets a gradient (nothing unused for DDP), no frozen one does
    expected = trainable | {n for n in names if not n.startswith("backbone.")}
    assert {n for n, p in model.named_parameters() if p.grad is not None} == expected


@pytest.mark.parametrize(
    "name,stride,channels,hw",
    [("EVA02-L-14", 14, 1024, (42, 70)), ("convnext_large_d_320", 4, 192, (64, 96))],
)
def test_paper_size_towers_build_and_run_at_a_non_square_size(name, stride, channels, hw):
    """The real towers with random weights: one forward at a small non-square size, the style site's
    stride and channels."""
    out_stride = 14 if name.startswith("EVA") else 32
    model = build_segmenter(
        ModelConfig(backbone=name, output_stride=out_stride, num_classes=3, class_names=list("abc")),
        seed=None,
    ).eval()
    x = images(1, 3, *hw, seed=6)
    with torch.no_grad():
        site = model.style_features(x)
        logits = model(x)
    assert site.shape == (1, channels, hw[0] // stride, hw[1] // stride)
    assert logits.shape == (1, 3, *hw) and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "preset,name", [("tiny_vit", "vit"), ("tiny_eva", "eva"), ("tiny_convnext", "convnext")]
)
def test_cli_on_tiny_towers(tmp_path, preset, name):
    """The real entry points end to end on each tiny tower: mine, train, eval, predict, export (checked
    against the model) and adapt (the head fine-tuned, the backbone kept)."""
    config = str(CONFIGS / f"{preset}.yaml")
    bank, run = tmp_path / "bank.safetensors", tmp_path / "run"
    main(["mine", "-c", config, f"style.bank={bank}", "mine.max_images=8", "mine.steps=2"])
    styles = StyleBank.load(bank)
    assert styles.channels == style_channels(build_clip(f"tiny-{name}", seed=0).visual) and len(styles) > 0
    main(["train", "-c", config, f"train.out={run}", f"style.bank={bank}", "train.iterations=3"])
    ckpt = load_checkpoint(run / "latest.pt")
    model = load_segmenter(run / "latest.pt")[0]
    assert ckpt["cur_itrs"] == 3 and model.family.name == name
    spec = "synthetic:fog:2:5:size=64"
    main(
        ["eval", str(run / "latest.pt"), "--data", spec, "--workers", "0", "--json", str(tmp_path / "e.json")]
    )
    assert 0 <= json.loads((tmp_path / "e.json").read_text())["datasets"][spec]["miou"] <= 100
    Image.new("RGB", (44, 30), (120, 30, 200)).save(tmp_path / "x.png")
    main(["predict", str(run / "latest.pt"), str(tmp_path / "x.png"), "--out", str(tmp_path / "pred")])
    assert Image.open(tmp_path / "pred" / "x_trainid.png").size == (44, 30)
    onnx = tmp_path / "m.onnx"
    main(["export", str(run / "latest.pt"), "--format", "onnx", "--size", "64x96", "--out", str(onnx)])
    x = images(1, 3, 64, 96, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(
            torch.as_tensor(load_exported(onnx, "onnx")(x)), model(x), atol=1e-4, rtol=0
        )
    adapt = ["adapt", str(run / "latest.pt"), "--target", "fog", "--data", "synthetic:day:4:0:size=64"]
    adapt += ["--out", str(tmp_path / "adapt"), "--iterations", "2", "--steps", "2", "--crop", "64"]
    main([*adapt, "--batch-size", "2", "--device", "cpu"])
    adapted = load_checkpoint(tmp_path / "adapt" / "fog" / "latest.pt")["model_state"]
    before = ckpt["model_state"]  # adapt fine-tunes the head only, from the run's weights
    assert all(torch.equal(adapted[k], v) for k, v in before.items() if k.startswith("backbone."))
    assert any(not torch.equal(adapted[k], v) for k, v in before.items() if k.startswith("classifier."))
    if model.neck is not None:  # a token tower's neck is part of the head
        assert any(not torch.equal(adapted[k], v) for k, v in before.items() if k.startswith("neck."))


@pytest.mark.parametrize("preset", ["tiny_eva", "tiny_convnext"])
def test_torchrun_trains_a_tower_with_style_mixing(tmp_path, preset):
    """Two CPU processes (gloo) train with FAMix's mixing: DDP finds a gradient for every trainable
    parameter (it fails on unused ones; the CLIP projections are frozen)."""
    config = str(CONFIGS / f"{preset}.yaml")
    bank = tmp_path / "bank.safetensors"
    main(["mine", "-c", config, f"style.bank={bank}", "mine.max_images=4", "mine.steps=1"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29547"]
    cmd += ["-m", "famix", "train", "-c", config, f"style.bank={bank}", f"train.out={tmp_path / 'run'}"]
    cmd += ["train.iterations=2", "train.val_interval=2", "data.batch_size=2", "data.val=[]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(CONFIGS.parents[1])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_checkpoint(tmp_path / "run" / "latest.pt")["cur_itrs"] == 2


def test_tiny_trunks_are_registered_only_to_build_a_config_naming_one():
    """famix's production modules leave timm's registry alone; building tiny-eva / tiny-convnext (their
    configs name famix_tiny_eva / famix_tiny_convnext) registers both trunks, from towers/tiny.py."""
    code = (
        "import timm\n"
        "import famix.models.build, famix.models.towers, famix.stages.train, famix.stages.mine, famix.cli\n"
        "print(timm.list_models('famix_tiny_*'))\n"
        "from famix.models.clip import build_clip\n"
        "build_clip('tiny-rn', seed=0)\n"
        "print(timm.list_models('famix_tiny_*'))\n"
        "assert build_clip('tiny-convnext', seed=0).visual.trunk.__class__.__name__ == 'ConvNeXt'\n"
        "print(timm.list_models('famix_tiny_*'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(CONFIGS.parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.splitlines() == ["[]", "[]", "['famix_tiny_convnext', 'famix_tiny_eva']"], out.stderr
    for name in ("eva", "convnext"):  # the packaged configs name them, under the prefix build_clip checks
        trunk = json.loads((CONFIGS.parent / "assets" / f"tiny-{name}.json").read_text())["vision_cfg"]
        assert trunk["timm_model_name"] == f"{TINY_TRUNK_PREFIX}{name}"


@pytest.mark.parametrize(
    "preset,multiple", [("gta5_eva02b16", 16), ("gta5_eva02l14", 14), ("gta5_convnextl", 32)]
)
def test_paper_presets_fit_their_towers(preset, multiple):
    """Each preset's stride is its tower's, its crops are whole strides (no padding), and its weights are an
    open_clip tag of its backbone, whose normalisation famix reads from open_clip's table."""
    cfg = load_config(preset)
    assert cfg.model.output_stride == multiple and cfg.model.freeze == "last-block"
    assert cfg.data.crop % multiple == 0 and cfg.mine.crop % multiple == 0
    assert cfg.model.weights in open_clip.list_pretrained_tags_by_model(cfg.model.backbone)
    table = open_clip.pretrained.get_pretrained_cfg(cfg.model.backbone, cfg.model.weights)
    assert clip_normalization(cfg.model.backbone, cfg.model.weights) == (table["mean"], table["std"])
