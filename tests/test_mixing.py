"""Style mixing: random draws (bank sampling with fallbacks, Beta, other patches) and the mixer."""

import pytest
import torch

from famix.style.bank import PackedBank, StyleBank
from famix.style.mixing import (
    LocalStyleMixer,
    mix_stats,
    sample_bank_indices,
    sample_beta,
    sample_other_patches,
)
from famix.style.stats import patch_stats


def test_bank_indices_follow_class_then_ignore_then_own():
    counts = torch.tensor([2, 0, 3, 1])  # class 0: rows 0-1, class 1: none, class 2: rows 2-4, ignore: row 5
    offsets = torch.cumsum(counts, 0) - counts
    classes = torch.tensor([[0, 1, 2], [255, 2, 0]]).repeat(50, 1)
    gen = torch.Generator().manual_seed(0)
    index, found = sample_bank_indices(classes, counts, offsets, gen)
    assert found.all()
    for c, i in zip(classes.flatten().tolist(), index.flatten().tolist(), strict=True):
        bucket = {0: 0, 1: 3, 2: 2, 255: 3}[c]  # class 1 is empty -> ignore bank
        assert offsets[bucket] <= i < offsets[bucket] + counts[bucket]
    # every style of a class gets drawn
    assert set(index[classes == 2].tolist()) == {2, 3, 4}
    # empty ignore bank too -> keep own style
    counts = torch.tensor([2, 0, 3, 0])
    offsets = torch.cumsum(counts, 0) - counts
    index, found = sample_bank_indices(classes, counts, offsets, gen)
    expected = torch.tensor([c in (0, 2) for c in classes.flatten().tolist()]).view_as(classes)
    assert torch.equal(found, expected)
    assert ((index >= 0) & (index < counts.sum())).all()  # safe to gather even where nothing was found


def test_bank_indices_uniform_within_class():
    counts, offsets = torch.tensor([4, 0]), torch.tensor([0, 4])
    index, _ = sample_bank_indices(
        torch.zeros(40_000, dtype=torch.long), counts, offsets, torch.Generator().manual_seed(1)
    )
    freq = torch.bincount(index, minlength=4).float() / 40_000
    assert (freq - 0.25).abs().max() < 0.015


def test_beta_matches_torch_distribution():
    a = 0.1
    ours = sample_beta((200_000,), a, a, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    ref = torch.distributions.Beta(a, a).sample((200_000,))
    assert ((ours >= 0) & (ours <= 1)).all()
    grid = torch.linspace(0.001, 0.999, 101)
    cdf = lambda x: (x[None, :] <= grid[:, None]).float().mean(1)  # noqa: E731
    assert (cdf(ours) - cdf(ref)).abs().max() < 0.01  # two-sample KS at n=2e5: 1% is ~3x the 95% bound
    assert ours.var().item() == pytest.approx(a * a / ((2 * a) ** 2 * (2 * a + 1)), rel=0.03)
    # other parameters too
    ours = sample_beta((100_000,), 2.0, 5.0, torch.Generator().manual_seed(1))
    assert ours.mean().item() == pytest.approx(2 / 7, abs=0.005)


def test_beta_is_reproducible_from_generator():
    x = sample_beta((3, 4, 1, 1), 0.1, 0.1, torch.Generator().manual_seed(5))
    y = sample_beta((3, 4, 1, 1), 0.1, 0.1, torch.Generator().manual_seed(5))
    assert torch.equal(x, y)


def test_other_patches_never_self_and_cover_all():
    other = sample_other_patches(3, 4, torch.Generator().manual_seed(0))
    assert other.shape == (12,)
    assert (other != torch.arange(12)).all()
    many = torch.stack([sample_other_patches(2, 2, torch.Generator().manual_seed(s)) for s in range(400)])
    for p in range(4):
        assert set(many[:, p].tolist()) == set(range(4)) - {p}


def test_mix_stats_matches_loop():
    g = torch.Generator().manual_seed(3)
    mu, sigma, mu_t, sigma_t = (torch.randn(2, 3, 2, 2, generator=g) for _ in range(4))
    alpha = torch.rand(2, 3, 1, 1, generator=g)
    m, s = mix_stats(mu, sigma, mu_t, sigma_t, alpha)
    for b in range(2):
        for c in range(3):
            a = alpha[b, c, 0, 0]
            torch.testing.assert_close(m[b, c], a * mu[b, c] + (1 - a) * mu_t[b, c])
            torch.testing.assert_close(s[b, c], a * sigma[b, c] + (1 - a) * sigma_t[b, c])


def loop_restyle(f, labels, grid, targets, alpha, relu=True):
    """Slow oracle: targets(b, i, j, own_mu, own_sigma) -> (mu_t, sigma_t) per patch; ReLU if ``relu``."""
    b_, c_, h, w = f.shape
    hl, wl = labels.shape[-2:]
    out = torch.empty_like(f)
    edges = lambda n: [(k * (n // grid), n if k == grid - 1 else (k + 1) * (n // grid)) for k in range(grid)]  # noqa: E731
    for b in range(b_):
        for (r0, r1), (l0, l1) in zip(edges(h), edges(hl), strict=True):
            for (c0, c1), (m0, m1) in zip(edges(w), edges(wl), strict=True):
                patch = f[b, :, r0:r1, c0:c1]
                mu = patch.mean((1, 2), keepdim=True)
                sigma = (patch.var((1, 2), keepdim=True) + 1e-5).sqrt()
                mu_t, sigma_t = targets(b, labels[b, l0:l1, m0:m1], mu, sigma)
                a = alpha[b]
                new_mu, new_sigma = a * mu + (1 - a) * mu_t, a * sigma + (1 - a) * sigma_t
                new = new_sigma * (patch - mu) / sigma + new_mu
                out[b, :, r0:r1, c0:c1] = new.clamp_min(0) if relu else new
    return out


@pytest.mark.parametrize(
    "b,c,h,w,scale,grid", [(2, 4, 12, 12, 4, 3), (3, 3, 13, 10, 4, 3), (1, 5, 9, 11, 2, 2)]
)
@pytest.mark.parametrize("mode", ["augment", "famix"])
@pytest.mark.parametrize("relu", [True, False])
def test_mixer_with_one_style_per_class_matches_loop(b, c, h, w, scale, grid, mode, relu):
    """relu: ResNet layer1 features (non-negative, restyled through a ReLU); not relu: signed ViT patch
    embeddings, restyled without one."""
    k = 3
    gen = torch.Generator().manual_seed(h * 31 + w)
    f = torch.randn(b, c, h, w, generator=gen)
    f = f.relu() if relu else f
    labels = torch.tensor([0, 1, 2, 255])[torch.randint(4, (b, h * scale, w * scale), generator=gen)]
    # bank: class 0 and ignore have one style each; classes 1, 2 are empty (-> ignore bank)
    bank_mu, bank_sigma = torch.randn(2, c, generator=gen), torch.rand(2, c, generator=gen) + 0.5
    counts, offsets = torch.tensor([1, 0, 0, 1]), torch.tensor([0, 1, 1, 1])
    bank = PackedBank(bank_mu, bank_sigma, counts, offsets)
    mixer = LocalStyleMixer(mode, grid, 0.1, k, bank, torch.Generator().manual_seed(9), relu=relu)
    out = mixer(f, labels)
    if mode == "augment":
        alpha = torch.zeros(b, c, 1, 1)
    else:  # the mixer draws bank indices first ([B, G, G] uniforms), then alpha
        g = torch.Generator().manual_seed(9)
        torch.rand(b, grid, grid, generator=g)
        alpha = sample_beta((b, c, 1, 1), 0.1, 0.1, g)

    def targets(bi, patch_labels, mu, sigma):
        values = [v if v < k else 255 for v in patch_labels.flatten().tolist()]
        top = max(values.count(v) for v in set(values))
        dominant = min(v for v in set(values) if values.count(v) == top)
        row = 0 if dominant == 0 else 1
        return bank_mu[row, :, None, None], bank_sigma[row, :, None, None]

    expected = loop_restyle(f, labels, grid, targets, alpha, relu)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert relu or (out < 0).any()  # signed features stay signed


@pytest.mark.parametrize("b,c,h,w,grid", [(2, 3, 12, 12, 3), (1, 4, 13, 10, 3), (3, 2, 9, 11, 2)])
@pytest.mark.parametrize("mode", ["augment", "famix"])
@pytest.mark.parametrize("relu", [True, False])
def test_mixer_keeps_every_patch_own_style_with_an_empty_bank(b, c, h, w, grid, mode, relu):
    """A bank with no style at all (the dummy row is never drawn): every patch, whatever its class, keeps
    its own statistics, so the features come back as they went in (through the ReLU if ``relu``)."""
    gen = torch.Generator().manual_seed(h * 7 + w)
    f = torch.randn(b, c, h, w, generator=gen)
    f = f.relu() + 0.1 if relu else f
    labels = torch.tensor([0, 1, 2, 255])[torch.randint(4, (b, 2 * h, 2 * w), generator=gen)]
    empty = StyleBank(list("abc"), c).packed()
    out = LocalStyleMixer(mode, grid, 0.1, 3, empty, torch.Generator().manual_seed(1), relu=relu)(f, labels)
    expected = loop_restyle(
        f, labels, grid, lambda bi, patch_labels, mu, sigma: (mu, sigma), torch.rand(b), relu
    )
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, f, rtol=1e-4, atol=1e-4)


def test_mixstyle_mode_uses_other_patches_of_the_batch():
    f = torch.rand(2, 3, 12, 12) + 0.1
    labels = torch.zeros(2, 12, 12, dtype=torch.long)
    mixer = LocalStyleMixer("mixstyle", 3, 0.1, 3, None, torch.Generator().manual_seed(4))
    out = mixer(f, labels)
    g = torch.Generator().manual_seed(4)
    other = sample_other_patches(2, 9, g)
    alpha = sample_beta((2, 3, 1, 1), 0.1, 0.1, g)
    mu, sigma = patch_stats(f, 3)
    flat_mu, flat_sigma = mu.permute(0, 2, 3, 1).reshape(18, 3), sigma.permute(0, 2, 3, 1).reshape(18, 3)

    def targets(bi, patch_labels, m, s):
        # identify the patch by its own stats, then look up the drawn partner
        p = next(q for q in range(18) if torch.allclose(flat_mu[q], m.flatten(), atol=1e-6))
        return flat_mu[other[p], :, None, None], flat_sigma[other[p], :, None, None]

    torch.testing.assert_close(out, loop_restyle(f, labels, 3, targets, alpha), rtol=1e-4, atol=1e-4)


def test_mixer_rejects_bad_modes():
    with pytest.raises(ValueError, match="famix, augment, mixstyle, none"):
        LocalStyleMixer("bogus")
    with pytest.raises(ValueError, match=r"needs a style bank: set style.bank=PATH \(made by `famix mine`\)"):
        LocalStyleMixer("famix", bank=None)
