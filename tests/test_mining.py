"""Style mining: patch splitting, patch choice, the PIN optimisation (vectorised == one patch at a time, for
both recipes), text targets, fp16 loss scaling, and the mining loop's resume check; the speed paths (the
one-query attention pool, bf16 and channels_last, several batches per PIN call, CUDA graphs) against the
plain computation."""

import copy
import os
import shutil
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import AttentionPool2d

from famix.config import load_config
from famix.data.trainids import IGNORE_INDEX
from famix.models.clip import build_clip
from famix.models.towers.resnet import pooled_embedding, resnet_tail
from famix.stages.mine import CUDA_PIN_CROPS, pin_batches
from famix.stages.mine import run as mine
from famix.style import pin
from famix.style.bank import StyleBank
from famix.style.patch_mining import MiningSettings, cap_per_class, first_per_class, mine_batches
from famix.style.pin import PinSGD, pin_optimize, split_patches
from famix.style.prompts import TextEmbedder, prompt
from famix.style.stats import grid_edges, normalize_patches, patch_stats

os.environ["HF_HUB_OFFLINE"] = "1"
TINY = str(Path(__file__).resolve().parents[1] / "src" / "famix" / "configs" / "tiny.yaml")
NAMES = [f"class{k}" for k in range(6)]


def mine_batch(visual, embed, images, labels, names, settings, generator, pool, ignore_index, *how):
    """One batch mined alone (``mine_batches`` of that batch)."""
    return mine_batches(
        visual, embed, [(images, labels, generator)], names, settings, pool, ignore_index, *how
    )[0]


@pytest.fixture(scope="module")
def clip():
    return build_clip("tiny-rn", seed=0).requires_grad_(False)


def patch_inputs(visual, b, h, w, g, seed):
    """Random layer1-like features cut on a G x G grid: (f_norm, flat mu, flat sigma [N, C])."""
    f = torch.randn(
        b, visual.layer1[-1].conv3.out_channels, h, w, generator=torch.Generator().manual_seed(seed)
    )
    mu, sigma = patch_stats(f.relu(), g)
    c = f.shape[1]
    flat = [t.permute(0, 2, 3, 1).reshape(-1, c) for t in (mu, sigma)]
    return normalize_patches(f.relu(), mu, sigma), *flat


def pin_alone(visual, patch, mu, sigma, text, pool, steps, lr, weight_decay):
    """The reference: one patch [1, C, h, w] optimised on its own loss, plain SGD (momentum 0.9)."""
    m, s = mu.clone().requires_grad_(True), sigma.clone().requires_grad_(True)
    opt = torch.optim.SGD([m, s], lr=lr, momentum=0.9, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        z = F.adaptive_avg_pool2d(torch.relu(s[None, :, None, None] * patch + m[None, :, None, None]), pool)
        loss = 1 - F.cosine_similarity(resnet_tail(visual, z), text[None])[0]
        loss.backward()
        opt.step()
    return m.detach(), s.detach()


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
    f_norm, flat_mu, flat_sigma = patch_inputs(visual, 2, h, w, g, seed=h)
    text = F.normalize(torch.randn(flat_mu.shape[0], 128, generator=torch.Generator().manual_seed(1)), dim=-1)
    steps, lr = 3, 0.5
    mu_s, sigma_s, cos, order = pin_optimize(
        visual, split_patches(f_norm, g), flat_mu, flat_sigma, text, 16, PinSGD(steps, lr)
    )
    rows, cols = grid_edges(h, g), grid_edges(w, g)
    for k, p in enumerate(order.tolist()):
        bi, rest = divmod(p, g * g)
        i, j = divmod(rest, g)
        patch = f_norm[bi : bi + 1, :, rows[i] : rows[i + 1], cols[j] : cols[j + 1]]
        m, s = pin_alone(visual, patch, flat_mu[p], flat_sigma[p], text[p], 16, steps, lr, 1e-4)
        torch.testing.assert_close(mu_s[k], m, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(sigma_s[k], s, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(mu_s, flat_mu[order])  # the styles did move


def test_pin_raises_similarity_to_text(clip):
    f_norm, *flat = patch_inputs(clip.visual, 2, 16, 16, 2, seed=0)
    text = F.normalize(torch.randn(8, 128, generator=torch.Generator().manual_seed(1)), dim=-1)
    groups = split_patches(f_norm, 2)
    _, _, before, _ = pin_optimize(clip.visual, groups, *flat, text, 16, PinSGD(steps=0))
    _, _, after, _ = pin_optimize(clip.visual, groups, *flat, text, 16, PinSGD(30, 1.0))
    assert (after > before).all()


def test_text_embedder_averages_templates_then_normalises(clip):
    templates = (lambda c: f"a photo of {c}.", lambda c: f"{c} in the wild.")
    embed = TextEmbedder(clip, templates)
    prompts = [prompt("Neon style", "car"), prompt("Neon style", None), prompt("Neon style", "car")]
    out = embed(prompts)
    assert prompts[1] == "photo" and out.shape == (3, 128)
    for p, e in zip(prompts, out, strict=True):
        tokens = open_clip.tokenize([t(p) for t in templates], clip.context_length)
        expected = F.normalize(clip.encode_text(tokens).mean(0), dim=-1)
        torch.testing.assert_close(e, expected, rtol=1e-4, atol=1e-5)
    assert len(embed.cache) == 2  # cached by prompt


def first_per_class_loop(classes: torch.Tensor) -> torch.Tensor:
    """The official rule, literally: walk patches j = l * B + b and keep each class's first one."""
    b, g, _ = classes.shape
    keep, seen = torch.zeros(classes.shape, dtype=torch.bool), set()
    for j in range(g * g * b):
        l, bi = divmod(j, b)
        row, col = divmod(l, g)
        k = classes[bi, row, col].item()
        if k not in seen:
            seen.add(k)
            keep[bi, row, col] = True
    return keep


def test_first_per_class_is_patch_major():
    # class 3 is in image 0 at position 3 and in image 1 at position 0: patch-major order takes image 1's
    classes = torch.tensor([[[5, 5], [255, 3]], [[3, 7], [5, 255]]])
    expected = [[[True, False], [True, False]], [[True, True], [False, False]]]
    assert first_per_class(classes).tolist() == expected


@pytest.mark.parametrize("b,g,k", [(1, 3, 4), (2, 2, 3), (4, 3, 6), (16, 3, 20), (3, 5, 2)])
def test_first_per_class_matches_the_official_loop(b, g, k):
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        classes = torch.randint(k, (b, g, g), generator=gen)
        classes[classes == k - 1] = IGNORE_INDEX  # ignore patches, a "class" of their own
        keep = first_per_class(classes)
        assert torch.equal(keep, first_per_class_loop(classes))
        assert keep.sum().item() == classes.unique().numel()


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


@pytest.mark.parametrize("b,h,w,g", [(2, 48, 48, 3), (3, 52, 40, 2)])
def test_official_step_equals_each_chosen_patch_alone_with_scaled_lr_and_decay(clip, b, h, w, g):
    """recipe=official: the first patch of each class (patch-major), optimised together on the averaged
    loss with lr 1 == each of those N patches optimised alone with lr 1/N and weight decay 1e-4 * N."""
    visual, steps, word = clip.visual, 3, "Neon style"
    gen = torch.Generator().manual_seed(b * h)
    images = torch.randn(b, 3, h, w, generator=gen)
    cells = torch.randint(4, (b, g, g), generator=gen)  # the classes repeat across images and positions
    cells[cells == 3] = IGNORE_INDEX
    rows, cols = grid_edges(h, g), grid_edges(w, g)
    r_band, c_band = (torch.repeat_interleave(torch.arange(g), torch.tensor(e).diff()) for e in (rows, cols))
    labels = cells[:, r_band][:, :, c_band]  # [B, H, W], each cell one class
    embed = TextEmbedder(clip, (lambda c: f"a photo of {c}.",))
    settings = MiningSettings(grid=g, steps=steps, vocabulary=(word,), recipe="official")
    assert settings.lr == 1.0  # the official recipe's default
    out = mine_batch(visual, embed, images, labels, NAMES, settings, torch.Generator(), 16, IGNORE_INDEX)

    chosen = first_per_class_loop(cells).nonzero().tolist()  # [(b, row, col)]
    n = len(chosen)
    assert sorted(out.classes.tolist()) == sorted(cells[tuple(zip(*chosen, strict=True))].tolist())
    f = visual.layer1(visual.stem(images))
    mu, sigma = patch_stats(f, g)
    f_norm = normalize_patches(f, mu, sigma)
    fr, fc = grid_edges(f.shape[2], g), grid_edges(f.shape[3], g)
    moved = []
    for bi, r, c in chosen:
        k = cells[bi, r, c].item()
        text = embed([prompt(word, NAMES[k] if k < len(NAMES) else None)])[0]
        patch = f_norm[bi : bi + 1, :, fr[r] : fr[r + 1], fc[c] : fc[c + 1]]
        m, s = pin_alone(visual, patch, mu[bi, :, r, c], sigma[bi, :, r, c], text, 16, steps, 1 / n, 1e-4 * n)
        (row,) = (out.classes == k).nonzero()[:, 0].tolist()
        torch.testing.assert_close(out.mu[row], m, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.sigma[row], s, rtol=1e-4, atol=1e-5)
        moved.append(not torch.allclose(m, mu[bi, :, r, c]))
    assert all(moved)


def test_fp16_pin_scales_the_loss_and_retakes_overflowed_steps(clip, monkeypatch):
    """fp16 autocast (run on CPU here) goes through a loss scaler; steps whose scaled gradients overflow
    are taken again, so a first scale that overflows for a dozen tries still gives `steps` real updates."""
    f_norm, flat_mu, flat_sigma = patch_inputs(clip.visual, 1, 8, 8, 2, seed=3)
    text = F.normalize(torch.randn(4, 128, generator=torch.Generator().manual_seed(4)), dim=-1)
    groups = split_patches(f_norm, 2)

    def run(amp):
        return pin_optimize(
            clip.visual, groups, flat_mu, flat_sigma, text, 16, PinSGD(3, 0.5), amp_dtype=amp
        )[:2]

    fp32, fp16 = run(None), run(torch.float16)
    monkeypatch.setattr(pin, "FP16_INIT_SCALE", 2.0**30)  # overflows fp16 on the first ~14 tries
    fp16_overflowing = run(torch.float16)
    for a, b, c in zip(fp32, fp16, fp16_overflowing, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=5e-3)  # fp16's precision
        torch.testing.assert_close(c, b, rtol=1e-3, atol=1e-4)  # three real updates, not skipped ones
    assert not torch.allclose(fp16_overflowing[0], flat_mu[torch.cat([i for _, i in groups])], atol=1e-2)


def test_fp16_pin_stops_when_the_gradients_stay_non_finite(clip):
    f_norm, flat_mu, flat_sigma = patch_inputs(clip.visual, 1, 12, 12, 3, seed=5)
    text = F.normalize(torch.randn(9, 128, generator=torch.Generator().manual_seed(6)), dim=-1)
    huge = flat_mu + 1e6  # the restyled patches overflow fp16 in the CLIP tail whatever the loss scale
    with pytest.raises(FloatingPointError, match="run.amp=bf16"):
        pin_optimize(
            clip.visual,
            split_patches(f_norm, 3),
            huge,
            flat_sigma,
            text,
            16,
            PinSGD(2),
            amp_dtype=torch.float16,
        )


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["mine.per_class=0"], "mine.per_class=0"),
        (["mine.per_class=2", "mine.recipe=official"], "mine.per_class=2 .*mine.recipe=official"),
        (["mine.recipe=paper"], "mine.recipe='paper'.*famix, official"),
    ],
)
def test_mine_rejects_meaningless_settings_before_writing(tmp_path, overrides, match):
    bank = tmp_path / "bank.safetensors"
    with pytest.raises(ValueError, match=match):
        mine(load_config(TINY, [f"style.bank={bank}", *overrides]), False)
    assert not bank.exists()


def tiny_mine(bank, *overrides):
    return mine(load_config(TINY, [f"style.bank={bank}", "mine.steps=1", *overrides]), False)


@pytest.fixture(scope="module")
def one_batch_bank(tmp_path_factory):
    """A bank interrupted after one batch of 4 images (the tiny config, 1 PIN step)."""
    bank = tmp_path_factory.mktemp("mine") / "bank.safetensors"
    tiny_mine(bank, "mine.max_images=4")
    return bank


@pytest.mark.parametrize(
    "override,change",
    [
        ("mine.momentum=0.5", "mine.momentum: 0.9 -> 0.5"),
        ("mine.weight_decay=0.001", "mine.weight_decay: 0.0001 -> 0.001"),
        ("mine.recipe=official", "mine.recipe: 'famix' -> 'official'"),
        ("mine.lr=0.2", "mine.lr: 0.1 -> 0.2"),
        ("run.seed=1", "run.seed: 0 -> 1"),
    ],
)
def test_mine_refuses_to_resume_with_other_settings_naming_them(one_batch_bank, override, change):
    with pytest.raises(FileExistsError, match="other settings") as error:
        tiny_mine(one_batch_bank, "mine.max_images=8", override)
    assert change in str(error.value) and "Pass another style.bank" in str(error.value)
    assert StyleBank.load(one_batch_bank).metadata["batches_done"] == 1  # untouched


def test_mine_resumes_with_other_save_every_and_max_images(one_batch_bank, tmp_path):
    bank = shutil.copy(one_batch_bank, tmp_path / "bank.safetensors")
    first = StyleBank.load(bank)
    resumed = tiny_mine(bank, "mine.max_images=8", "mine.save_every=1", "mine.lr=0.1")  # lr: the default
    assert resumed.metadata["batches_done"] == 2 and len(resumed) == 2 * 4 * 9
    for name, (mu, _) in first.styles.items():  # the first batch's styles are kept, the second's appended
        assert torch.equal(resumed.styles[name][0][: len(mu)], mu)


def test_mine_official_recipe_mines_at_most_one_style_per_class_per_batch(tmp_path):
    bank = tmp_path / "bank.safetensors"
    counts = []
    for images in (4, 8):  # one batch, then a resumed second one
        counts.append(tiny_mine(bank, "mine.recipe=official", f"mine.max_images={images}").counts())
    per_batch = [counts[0], {name: counts[1][name] - counts[0][name] for name in counts[0]}]
    for batch in per_batch:
        assert set(batch.values()) <= {0, 1} and sum(batch.values()) >= 1
    meta = StyleBank.load(bank).metadata
    mined = meta["run"]["settings"]["mine"]
    assert mined["recipe"] == "official" and mined["lr"] == 1.0 and meta["batches_done"] == 2


# ---- the speed paths: each equals the plain computation (to float rounding, or to bf16's precision)


@pytest.mark.parametrize(
    "spatial,width,heads,out,n",
    [(1, 8, 1, 4, 3), (2, 64, 2, 128, 5), (3, 96, 4, None, 2), (7, 256, 8, 64, 1)],
)
def test_pooled_embedding_equals_open_clip_attnpool(spatial, width, heads, out, n):
    """The class-token query alone == open_clip's AttentionPool2d (all H * W + 1 queries, token 0 kept):
    value and input gradient, fp32, random weights, positional embedding and inputs."""
    torch.manual_seed(spatial * width)
    attnpool = AttentionPool2d(spatial, width, heads, out).requires_grad_(False)
    x = torch.randn(n, width, spatial, spatial, requires_grad=True)
    expected, ours = attnpool(x), pooled_embedding(attnpool, x)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    w = torch.randn_like(expected)  # a random upstream gradient
    (grad,), (grad_expected,) = (torch.autograd.grad((y * w).sum(), x) for y in (ours, expected))
    torch.testing.assert_close(grad, grad_expected, rtol=1e-5, atol=1e-5)


def test_resnet_tail_pools_as_the_clip_tower(clip):
    z = torch.randn(3, clip.visual.layer1[-1].conv3.out_channels, 16, 16)
    v = clip.visual
    expected = v.attnpool(v.layer4(v.layer3(v.layer2(z))))
    torch.testing.assert_close(resnet_tail(v, z), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("b,c,h,w,g", [(2, 3, 12, 12, 3), (1, 4, 13, 10, 3), (2, 4, 9, 7, 2)])
def test_split_patches_keeps_channels_last(b, c, h, w, g):
    x = torch.randn(b, c, h, w)
    nhwc = split_patches(x.contiguous(memory_format=torch.channels_last), g)
    for (p, i), (q, j) in zip(split_patches(x, g), nhwc, strict=True):
        assert torch.equal(q, p) and torch.equal(j, i)
        assert q.is_contiguous(memory_format=torch.channels_last) and not q.is_contiguous()


def tail_inputs(visual):
    """Record (dtype, channels_last) of every input of the stem's first conv and of layer2 (the tail)."""
    seen = {"stem": [], "tail": []}
    for name, module in (("stem", visual.conv1), ("tail", visual.layer2)):
        module.register_forward_pre_hook(
            lambda _, args, name=name: seen[name].append(
                (args[0].dtype, args[0].is_contiguous(memory_format=torch.channels_last))
            )
        )
    return seen


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_channels_last_and_bf16_feed_the_tail_as_asked(clip, amp):
    """channels_last=True runs the stem and the CLIP tail NHWC; under bf16 autocast the restyled, pooled
    patches reach the tail in bf16 (the stem, and so the styles' statistics, stay fp32). In fp32, NHWC mines
    what NCHW does to float rounding."""
    gen = torch.Generator().manual_seed(7)
    images, labels = torch.randn(2, 3, 48, 48, generator=gen), torch.randint(4, (2, 48, 48), generator=gen)
    settings = MiningSettings(grid=3, steps=2, vocabulary=("Neon style",))
    embed = TextEmbedder(clip, (lambda c: f"a photo of {c}.",))

    def run(visual, amp, channels_last):
        gen = torch.Generator().manual_seed(0)
        return mine_batch(
            visual, embed, images, labels, NAMES, settings, gen, 16, IGNORE_INDEX, amp, channels_last
        )

    nhwc = copy.deepcopy(clip.visual).to(memory_format=torch.channels_last)
    seen = tail_inputs(nhwc)
    plain, fast = run(clip.visual, None, False), run(nhwc, amp, True)
    assert set(seen["stem"]) == {(torch.float32, True)}
    assert set(seen["tail"]) == {(amp or torch.float32, True)}
    assert torch.equal(fast.classes, plain.classes)
    if amp is None:
        for a, b in zip(fast, plain, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.cos, plain.cos, rtol=0, atol=0.02)


@pytest.mark.parametrize("steps", [1, 5])
def test_bf16_pin_moves_the_styles_as_fp32_does(clip, steps):
    """bf16 autocast (restyle, pooling and CLIP tail in bf16; styles and SGD in fp32) == fp32 to bf16's
    precision: the styles' moves within 15 % (observed 3-9 %, as the old fp32 restyle under bf16 autocast:
    3-7 %), the final cosine within 5e-3. Features off ReLU's kink: post-ReLU features restyled with their
    own statistics sit exactly on it, where any rounding picks another subgradient."""
    g = torch.Generator().manual_seed(steps)
    f = torch.randn(2, clip.visual.layer1[-1].conv3.out_channels, 12, 12, generator=g) + 1
    mu, sigma = patch_stats(f, 3)
    flat_mu, flat_sigma = (t.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for t in (mu, sigma))
    text = F.normalize(torch.randn(18, 128, generator=g), dim=-1)
    groups = split_patches(normalize_patches(f, mu, sigma), 3)
    args = (clip.visual, groups, flat_mu, flat_sigma, text, 16, PinSGD(steps))
    fp32, bf16 = pin_optimize(*args), pin_optimize(*args, amp_dtype=torch.bfloat16)
    for a, b, start in zip(bf16[:2], fp32[:2], (flat_mu[fp32[3]], flat_sigma[fp32[3]]), strict=True):
        assert (a - b).norm() < 0.15 * (b - start).norm()
    torch.testing.assert_close(bf16[2], fp32[2], rtol=0, atol=5e-3)


def batch_list(sizes, seed=0, size=48):
    """Batches [(images, labels, generator)] of the given sizes; classes 0-3 and the ignore index."""
    gen, batches = torch.Generator().manual_seed(seed), []
    for k, b in enumerate(sizes):
        images = torch.randn(b, 3, size, size, generator=gen)
        labels = torch.randint(5, (b, size, size), generator=gen)
        labels[labels == 4] = IGNORE_INDEX
        batches.append((images, labels, torch.Generator().manual_seed(100 + k)))
    return batches


@pytest.mark.parametrize("recipe,per_class", [("famix", None), ("official", None), ("famix", 1)])
def test_several_batches_in_one_pin_call_mine_each_as_alone(clip, recipe, per_class):
    """mine_batches == mine_batch per batch (own prompts, own patch choice, the official average per batch).
    Tolerance: patches are independent, but the CLIP tail runs on another number of them, which may round
    differently (observed: bit-identical or 2e-8)."""
    embed = TextEmbedder(clip, (lambda c: f"a photo of {c}.",))
    settings = MiningSettings(
        grid=3, steps=3, vocabulary=("Neon style", "Pixel art"), recipe=recipe, per_class=per_class
    )
    common = (NAMES, settings, 16, IGNORE_INDEX)
    alone = [
        mine_batch(clip.visual, embed, i, l, NAMES, settings, g, 16, IGNORE_INDEX)
        for i, l, g in batch_list([2, 3, 1])
    ]
    together = mine_batches(clip.visual, embed, batch_list([2, 3, 1]), *common)
    assert len(together) == 3
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a.classes, b.classes) and len(a.mu) > 0
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)


def test_pin_batches_rounds_pin_crops_to_whole_batches():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # only the device type is read
    config = load_config(TINY).mine  # batch_size 4
    assert pin_batches(config, cpu) == 1 and pin_batches(config, cuda) == CUDA_PIN_CROPS // 4
    for crops, batches in ((1, 1), (4, 1), (11, 2), (12, 3)):
        config.pin_crops = crops  # read with getattr until MineConfig has the field
        assert pin_batches(config, cpu) == pin_batches(config, cuda) == batches
    config.pin_crops = 0
    with pytest.raises(ValueError, match="mine.pin_crops=0"):
        pin_batches(config, cpu)


def test_pin_crops_change_only_the_speed(tmp_path):
    """The bank of 3 batches mined one batch per PIN call == two then one == all three at once, also when
    the second run resumes an interrupted bank (float rounding aside, as above)."""

    def run(bank, crops, images=12):
        cfg = load_config(TINY, [f"style.bank={bank}", "mine.steps=2", f"mine.max_images={images}"])
        cfg.mine.pin_crops = crops
        return mine(cfg, False)

    banks = [run(tmp_path / "a.safetensors", 4), run(tmp_path / "b.safetensors", 8)]
    run(tmp_path / "c.safetensors", 4, images=4)  # interrupted after one batch, resumed 2 batches per call
    banks.append(run(tmp_path / "c.safetensors", 12))
    for bank in banks:
        assert bank.metadata["batches_done"] == 3 and len(bank) == 12 * 9
        for name, (mu, sigma) in banks[0].styles.items():
            torch.testing.assert_close(bank.styles[name][0], mu, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(bank.styles[name][1], sigma, rtol=1e-5, atol=1e-6)


def test_cuda_graph_is_ignored_off_cuda(clip):
    f_norm, flat_mu, flat_sigma = patch_inputs(clip.visual, 1, 8, 8, 2, seed=9)
    text = F.normalize(torch.randn(4, 128, generator=torch.Generator().manual_seed(9)), dim=-1)
    args = (clip.visual, split_patches(f_norm, 2), flat_mu, flat_sigma, text, 16, PinSGD(5, 0.5))
    for a, b in zip(pin_optimize(*args), pin_optimize(*args, cuda_graph=True), strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_cuda_graph_replays_the_eager_steps(amp):
    """On CUDA: warm-up steps, one captured SGD step replayed == the eager loop (same kernels, so to
    cuDNN's run-to-run rounding); channels_last, and the official step's per-patch weights."""
    visual = (
        build_clip("tiny-rn", seed=0)
        .visual.requires_grad_(False)
        .cuda()
        .to(memory_format=torch.channels_last)
    )
    f_norm, flat_mu, flat_sigma = (t.cuda() for t in patch_inputs(visual, 2, 12, 12, 3, seed=11))
    text = F.normalize(torch.randn(18, 128, generator=torch.Generator().manual_seed(11)), dim=-1).cuda()
    weight = torch.full((18,), 1 / 18, device="cuda")
    args = (visual, split_patches(f_norm, 3), flat_mu, flat_sigma, text, 16, PinSGD(8, 0.5, 0.9, 1e-4))
    eager = pin_optimize(*args, amp_dtype=amp, weight=weight, channels_last=True)
    graphed = pin_optimize(*args, amp_dtype=amp, weight=weight, channels_last=True, cuda_graph=True)
    assert not torch.allclose(eager[0], flat_mu[eager[3]])  # the styles moved
    for a, b in zip(graphed, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
