"""Style mining and mixing on CLIP ViT image towers: the style site (patch embeddings before the positional
ones), the tail that embeds restyled maps (== open_clip's own forward), the ReLU-free restyle's identity, and
`famix mine` writing a ViT-wide bank. PIN against a per-patch loop, for every signed-site tower, is in
tests/test_towers.py."""

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from famix.config import load_config
from famix.data.trainids import IGNORE_INDEX
from famix.models.clip import build_clip
from famix.models.towers import (
    style_channels,
    style_features,
    style_grid,
    style_relu,
    style_tail,
    tower,
)
from famix.stages.mine import run as mine
from famix.style.bank import StyleBank
from famix.style.mixing import LocalStyleMixer, mix_stats
from famix.style.patch_mining import MiningSettings, mine_batches
from famix.style.stats import affine_patches, normalize_patches, patch_stats, restyle

os.environ["HF_HUB_OFFLINE"] = "1"
TINY = str(Path(__file__).resolve().parents[1] / "src" / "famix" / "configs" / "tiny.yaml")
TEXT_CFG = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


def vit_config(**vision) -> dict:
    """A tiny random CLIP ViT config: 32 px, 8 px patches (a 4 x 4 token grid), width 32."""
    cfg = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16, **vision}
    return {"embed_dim": 32, "vision_cfg": cfg, "text_cfg": TEXT_CFG}


def vit_clip(tmp_path: Path, seed: int = 0, **vision):
    """(CLIP, config path) of a tiny random ViT CLIP built by famix from a .json config."""
    path = tmp_path / f"vit-{seed}.json"
    path.write_text(json.dumps(vit_config(**vision)))
    return build_clip(str(path), seed=seed).requires_grad_(False), path


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return vit_clip(tmp_path_factory.mktemp("vit"))[0].visual


@pytest.mark.parametrize(
    "seed,vision", [(0, {}), (1, {}), (2, {"pool_type": "avg", "final_ln_after_pool": True})]
)
def test_vit_tail_on_patch_embeddings_equals_open_clip(tmp_path, seed, vision):
    visual = vit_clip(tmp_path, seed, **vision)[0].visual
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    z = style_features(visual, x)  # [3, W, S, S]
    assert z.shape == (3, style_channels(visual), style_grid(visual), style_grid(visual))
    torch.testing.assert_close(style_tail(visual, z), visual(x), rtol=1e-5, atol=1e-6)


def test_towers_tell_resnets_from_vits(vit):
    rn = build_clip("tiny-rn", seed=0).visual
    x = torch.randn(1, 3, rn.image_size, rn.image_size)
    f = style_features(rn, x)
    torch.testing.assert_close(f, rn.layer1(rn.stem(x)))
    # the style grid is the style site's size at the tower's native input size, for both towers
    assert f.shape[1:] == (style_channels(rn), style_grid(rn), style_grid(rn))
    size = vit.image_size[0]
    z = style_features(vit, torch.randn(1, 3, size, size))
    assert z.shape[1:] == (style_channels(vit), style_grid(vit), style_grid(vit))
    assert (tower(rn).name, style_relu(rn), tower(vit).name, style_relu(vit)) == (
        "resnet",
        True,
        "vit",
        False,
    )
    with pytest.raises(TypeError, match="Linear"):
        style_features(nn.Linear(3, 3), x)
    with pytest.raises(ValueError, match="token grid"):
        style_tail(vit, torch.randn(1, style_channels(vit), 5, 5))


def test_mining_a_vit_starts_from_the_patch_embedding_statistics(vit):
    """mine_batches on a ViT mines the patches of conv1(images): with 0 steps, the styles are their stats."""
    gen = torch.Generator().manual_seed(3)
    images, labels = torch.randn(2, 3, 48, 48, generator=gen), torch.randint(0, 3, (2, 48, 48), generator=gen)
    settings = MiningSettings(grid=3, steps=0, vocabulary=("Neon style",))
    embed = lambda prompts: F.normalize(torch.randn(len(prompts), 32), dim=-1)  # noqa: E731
    names = ["a", "b", "c"]
    (styles,) = mine_batches(
        vit, embed, [(images, labels, gen)], names, settings, style_grid(vit), IGNORE_INDEX
    )
    mu, sigma = patch_stats(vit.conv1(images), 3)  # [2, W, 3, 3]
    c = style_channels(vit)
    flat_mu, flat_sigma = (t.permute(0, 2, 3, 1).reshape(-1, c) for t in (mu, sigma))
    assert styles.mu.shape == (2 * 9, c)
    torch.testing.assert_close(torch.sort(styles.mu, 0).values, torch.sort(flat_mu, 0).values)
    torch.testing.assert_close(torch.sort(styles.sigma, 0).values, torch.sort(flat_sigma, 0).values)


def test_restyle_without_relu_by_the_patches_own_statistics_is_the_identity():
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(2, 4, 12, 10, generator=gen)  # signed features
    assert (f < 0).any()
    ones, zeros = torch.ones(2, 4, 3, 3), torch.zeros(2, 4, 3, 3)
    assert torch.equal(affine_patches(f, ones, zeros, relu=False), f)
    assert not torch.equal(affine_patches(f, ones, zeros), f)  # the ReLU would cut the negatives
    mu, sigma = patch_stats(f, 3)
    torch.testing.assert_close(restyle(normalize_patches(f, mu, sigma), mu, sigma, relu=False), f)
    # alpha = 1: the mixed style is the patch's own
    mu_t, sigma_t = mu + torch.randn(mu.shape, generator=gen), sigma * 2
    mu_mix, sigma_mix = mix_stats(mu, sigma, mu_t, sigma_t, torch.ones(2, 4, 1, 1))
    scale = sigma_mix / sigma
    torch.testing.assert_close(affine_patches(f, scale, mu_mix - mu * scale, relu=False), f)


@pytest.mark.parametrize("mode", ["augment", "famix"])
def test_mixer_without_relu_keeps_signed_features_with_their_own_style(mode):
    """An empty bank: every patch keeps its own style, which without the ReLU gives the features back."""
    f = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(2, 48, 48, dtype=torch.long)
    empty = StyleBank(list("abc"), 3).packed()  # 3 classes, no style
    out = LocalStyleMixer(mode, 3, 0.1, 3, empty, torch.Generator(), relu=False)(f, labels)
    torch.testing.assert_close(out, f, rtol=1e-5, atol=1e-5)
    relu_out = LocalStyleMixer(mode, 3, 0.1, 3, empty, torch.Generator())(f, labels)
    assert not torch.allclose(relu_out, f)  # the default (ResNet) restyle cuts the negatives


def test_famix_mine_on_a_vit_writes_a_bank_as_wide_as_the_vit(tmp_path):
    visual, config = vit_clip(tmp_path)
    visual = visual.visual
    bank = tmp_path / "bank.safetensors"
    overrides = [f"style.bank={bank}", f"model.backbone={config}", "mine.steps=1", "mine.max_images=4"]
    mined = mine(load_config(TINY, overrides), False)
    saved = StyleBank.load(bank)
    width = json.loads(config.read_text())["vision_cfg"]["width"]
    assert saved.channels == width == style_channels(visual) and mined.channels == width
    assert len(saved) == 4 * 3 * 3 and saved.metadata["run"]["settings"]["model"]["backbone"] == str(config)
    mu = torch.cat([m for m, _ in saved.styles.values()])
    assert mu.shape == (4 * 3 * 3, width) and torch.isfinite(mu).all()
