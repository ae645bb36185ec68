"""Patch statistics, dominant classes and restyling against slow per-patch loops."""

import pytest
import torch

from famix.style.stats import (
    affine_patches,
    dominant_class,
    grid_edges,
    normalize_patches,
    patch_stats,
    restyle,
)

SHAPES = [(2, 3, 12, 12, 3), (1, 5, 13, 10, 3), (3, 4, 17, 9, 2), (2, 6, 8, 11, 4), (1, 2, 6, 6, 1)]


def loop_edges(size, grid):
    step = size // grid
    return [(i * step, size if i == grid - 1 else (i + 1) * step) for i in range(grid)]


def test_grid_edges_last_band_takes_remainder():
    for size in range(3, 40):
        for grid in range(1, 4):
            edges = grid_edges(size, grid)
            assert list(zip(edges[:-1], edges[1:], strict=True)) == loop_edges(size, grid)
    with pytest.raises(ValueError, match="grid"):
        grid_edges(2, 3)


@pytest.mark.parametrize("b,c,h,w,g", SHAPES)
def test_patch_stats_match_loop(b, c, h, w, g):
    f = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(h * w)) * 3 + 1
    mu, sigma = patch_stats(f, g)
    assert mu.shape == sigma.shape == (b, c, g, g)
    for bi in range(b):
        for i, (r0, r1) in enumerate(loop_edges(h, g)):
            for j, (c0, c1) in enumerate(loop_edges(w, g)):
                for ch in range(c):
                    patch = f[bi, ch, r0:r1, c0:c1].double()
                    assert mu[bi, ch, i, j].item() == pytest.approx(patch.mean().item(), abs=1e-5)
                    expected = (patch.var(unbiased=True) + 1e-5).sqrt().item()
                    assert sigma[bi, ch, i, j].item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("b,c,h,w,g", SHAPES)
def test_normalize_and_restyle_match_loop(b, c, h, w, g):
    gen = torch.Generator().manual_seed(7)
    f = torch.randn(b, c, h, w, generator=gen)
    mu, sigma = patch_stats(f, g)
    new_mu, new_sigma = torch.randn(b, c, g, g, generator=gen), torch.rand(b, c, g, g, generator=gen) + 0.1
    f_norm = normalize_patches(f, mu, sigma)
    out = restyle(f_norm, new_mu, new_sigma)
    expected_norm, expected = torch.empty_like(f), torch.empty_like(f)
    for bi in range(b):
        for i, (r0, r1) in enumerate(loop_edges(h, g)):
            for j, (c0, c1) in enumerate(loop_edges(w, g)):
                patch = f[bi, :, r0:r1, c0:c1]
                m = patch.mean((1, 2), keepdim=True)
                s = (patch.var((1, 2), unbiased=True, keepdim=True) + 1e-5).sqrt()
                expected_norm[bi, :, r0:r1, c0:c1] = (patch - m) / s
                z = new_sigma[bi, :, i, j, None, None] * (patch - m) / s + new_mu[bi, :, i, j, None, None]
                expected[bi, :, r0:r1, c0:c1] = z.clamp_min(0)
    torch.testing.assert_close(f_norm, expected_norm, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def loop_dominant(labels, g, k):
    b, h, w = labels.shape
    out = torch.empty(b, g, g, dtype=torch.long)
    for bi in range(b):
        for i, (r0, r1) in enumerate(loop_edges(h, g)):
            for j, (c0, c1) in enumerate(loop_edges(w, g)):
                values = labels[bi, r0:r1, c0:c1].flatten().tolist()
                values = [v if 0 <= v < k else 255 for v in values]
                counts = {v: values.count(v) for v in set(values)}
                top = max(counts.values())
                out[bi, i, j] = min(v for v, n in counts.items() if n == top)
    return out


@pytest.mark.parametrize(
    "b,h,w,g,k", [(2, 12, 12, 3, 4), (3, 13, 10, 3, 19), (1, 17, 9, 2, 3), (2, 7, 11, 3, 2)]
)
def test_dominant_class_matches_loop_with_ties_and_ignore(b, h, w, g, k):
    gen = torch.Generator().manual_seed(h + w)
    # few distinct values so ties are frequent; include ignore (255) and out-of-range ids (k, 40)
    choices = torch.tensor(list(range(k)) + [255, k, 40])
    labels = choices[torch.randint(len(choices), (b, h, w), generator=gen)]
    torch.testing.assert_close(dominant_class(labels, g, k, 255), loop_dominant(labels, g, k))


def test_dominant_class_tie_goes_to_smaller_value_and_ignore_loses():
    labels = torch.tensor([[[3, 1], [1, 3]]])  # tie 1 vs 3
    assert dominant_class(labels, 1, 5, 255).item() == 1
    labels = torch.tensor([[[255, 2], [2, 255]]])  # tie class 2 vs ignore
    assert dominant_class(labels, 1, 5, 255).item() == 2
    labels = torch.tensor([[[255, 255], [255, 2]]])
    assert dominant_class(labels, 1, 5, 255).item() == 255


@pytest.mark.parametrize("b,c,h,w,g", [(2, 4, 12, 12, 3), (3, 5, 13, 10, 3), (1, 3, 9, 11, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_fused_restyle_equals_normalize_then_restyle(b, c, h, w, g, channels_last, dtype, tol):
    """The mixer's one-pass ReLU(scale * f + shift) against the two-step formula in fp32: fp32 within 1e-5,
    bf16 within 3e-2 (bf16 keeps 8 bits of mantissa: ~0.4 % per rounding, on values of a few units)."""
    gen = torch.Generator().manual_seed(b * 100 + h * 10 + w)
    f = (torch.randn(b, c, h, w, generator=gen) * 2 + 1).to(dtype)
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    mu, sigma = patch_stats(f, g)
    mu2 = torch.randn(b, c, g, g, generator=gen)
    sigma2 = torch.rand(b, c, g, g, generator=gen) + 0.5
    expected = restyle(normalize_patches(f.float(), mu, sigma), mu2, sigma2)
    scale = sigma2 / sigma
    out = affine_patches(f, scale, mu2 - mu * scale)
    assert out.dtype == dtype and out.shape == f.shape
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol)
