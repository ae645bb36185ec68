"""Style mining: patch splitting, the PIN optimisation (vectorised == one patch at a time), text targets."""

import os

import pytest
import torch
import torch.nn.functional as F

from famix.engine.mine import cap_per_class, first_per_class
from famix.models.clip import build_clip
from famix.style.mining import clip_tail, pin_optimize, split_patches
from famix.style.prompts import TextEmbedder, prompt
from famix.style.stats import grid_edges, normalize_patches, patch_stats

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="module")
def clip():
    return build_clip("tiny-rn", seed=0).requires_grad_(False)


@pytest.mark.parametrize(
    "b,c,h,w,g", [(2, 3, 12, 12, 3), (1, 2, 13, 10, 3), (2, 4, 9, 7, 2), (1, 1, 5, 5, 1)]
)
def test_split_patches_matches_slicing(b, c, h, w, g):
    x = torch.randn(b, c, h, w)
    rows, cols = grid_edges(h, g), grid_edges(w, g)
    seen = set()
    for patches, index in split_patches(x, g):
        for patch, flat in zip(patches, index.tolist(), strict=True):
            bi, rest = divmod(flat, g * g)
            i, j = divmod(rest, g)
            assert torch.equal(patch, x[bi, :, rows[i] : rows[i + 1], cols[j] : cols[j + 1]])
            seen.add(flat)
    assert seen == set(range(b * g * g))


@pytest.mark.parametrize("h,w,g", [(12, 12, 3), (13, 10, 3)])
def test_pin_is_per_patch_independent_and_matches_loop(clip, h, w, g):
    visual = clip.visual
    gen = torch.Generator().manual_seed(h)
    f = torch.randn(2, visual.layer1[-1].conv3.out_channels, h, w, generator=gen).relu()
    mu, sigma = patch_stats(f, g)
    f_norm = normalize_patches(f, mu, sigma)
    c = f.shape[1]
    flat_mu, flat_sigma = (t.permute(0, 2, 3, 1).reshape(-1, c) for t in (mu, sigma))
    text = F.normalize(torch.randn(flat_mu.shape[0], 128, generator=gen), dim=-1)
    steps, lr = 3, 0.5
    mu_s, sigma_s, cos, order = pin_optimize(
        visual, split_patches(f_norm, g), flat_mu, flat_sigma, text, 16, steps, lr
    )
    rows, cols = grid_edges(h, g), grid_edges(w, g)
    for k, p in enumerate(order.tolist()):
        bi, rest = divmod(p, g * g)
        i, j = divmod(rest, g)
        patch = f_norm[bi : bi + 1, :, rows[i] : rows[i + 1], cols[j] : cols[j + 1]]
        m = flat_mu[p].clone().requires_grad_(True)
        s = flat_sigma[p].clone().requires_grad_(True)
        opt = torch.optim.SGD([m, s], lr=lr, momentum=0.9, weight_decay=1e-4)
        for _ in range(steps):
            opt.zero_grad()
            z = F.adaptive_avg_pool2d(torch.relu(s[None, :, None, None] * patch + m[None, :, None, None]), 16)
            loss = 1 - F.cosine_similarity(clip_tail(visual, z), text[p : p + 1])[0]
            loss.backward()
            opt.step()
        torch.testing.assert_close(mu_s[k], m.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(sigma_s[k], s.detach(), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(mu_s, flat_mu[order])  # the styles did move


def test_pin_raises_similarity_to_text(clip):
    f = torch.randn(2, 64, 16, 16, generator=torch.Generator().manual_seed(0)).relu()
    mu, sigma = patch_stats(f, 2)
    flat = [t.permute(0, 2, 3, 1).reshape(-1, 64) for t in (mu, sigma)]
    text = F.normalize(torch.randn(8, 128, generator=torch.Generator().manual_seed(1)), dim=-1)
    groups = split_patches(normalize_patches(f, mu, sigma), 2)
    _, _, before, _ = pin_optimize(clip.visual, groups, *flat, text, 16, steps=0)
    _, _, after, _ = pin_optimize(clip.visual, groups, *flat, text, 16, steps=30, lr=1.0)
    assert (after > before).all()


def test_text_embedder_averages_templates_then_normalises(clip):
    templates = (lambda c: f"a photo of {c}.", lambda c: f"{c} in the wild.")
    embed = TextEmbedder(clip, templates)
    prompts = [prompt("Neon style", "car"), prompt("Neon style", None), prompt("Neon style", "car")]
    out = embed(prompts)
    assert prompts[1] == "photo" and out.shape == (3, 128)
    for p, e in zip(prompts, out, strict=True):
        import open_clip

        tokens = open_clip.tokenize([t(p) for t in templates], clip.context_length)
        expected = F.normalize(clip.encode_text(tokens).mean(0), dim=-1)
        torch.testing.assert_close(e, expected, rtol=1e-4, atol=1e-5)
    assert len(embed.cache) == 2  # cached by prompt


def test_first_per_class_keeps_the_first_patch_of_each_class():
    classes = torch.tensor([3, 1, 3, 255, 1, 0, 255])
    assert first_per_class(classes).tolist() == [True, True, False, True, False, True, False]


@pytest.mark.parametrize("seeded", [True, False])
@pytest.mark.parametrize("n, k, cap", [(1, 3, 1), (37, 4, 2), (200, 20, 5), (64, 2, 40)])
def test_cap_per_class_matches_a_loop(n, k, cap, seeded):
    g = torch.Generator().manual_seed(n)
    classes = torch.randint(k, (n,), generator=g)
    classes[classes == k - 1] = 255  # an ignore class among them
    keep = cap_per_class(classes, cap, torch.Generator().manual_seed(5) if seeded else None)
    # the loop: walk the patches in priority order (the same random permutation, or index order without a
    # generator) and keep each one while its class has had fewer than `cap` kept
    order = torch.randperm(n, generator=torch.Generator().manual_seed(5)).tolist() if seeded else range(n)
    seen, expected = {}, [False] * n
    for i in order:
        c = classes[i].item()
        if seen.get(c, 0) < cap:
            expected[i] = True
        seen[c] = seen.get(c, 0) + 1
    assert keep.tolist() == expected
    for c in classes.unique():  # every class keeps min(count, cap) patches
        assert keep[classes == c].sum().item() == min((classes == c).sum().item(), cap)


@pytest.mark.parametrize("overrides", [{"per_class": 0}, {"per_class": 2, "one_per_class": True}])
def test_mine_rejects_a_meaningless_per_class_cap(tmp_path, overrides):
    from famix.config import Config
    from famix.engine.mine import mine

    cfg = Config()
    cfg.mine.out = str(tmp_path / "bank.safetensors")
    for key, value in overrides.items():
        setattr(cfg.mine, key, value)
    with pytest.raises(ValueError, match="mine.per_class"):
        mine(cfg)
    assert not (tmp_path / "bank.safetensors").exists()
