"""`famix adapt --recipe poda` (the default) is the official PODA recipe: image-level PIN against a plain
transcription of PIN_aug.py's loop, bit for bit; fine-tuning without jitter, flip or label smoothing
whatever the checkpoint used; the sigma clamp; and the recipe in the run record."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from famix.config import load_config
from famix.models.clip import build_clip
from famix.models.towers import style_grid
from famix.stages import adapt
from famix.stages import train as train_stage
from famix.style.image_pin import image_pin, poda_restyle


@pytest.fixture(scope="module")
def visual():
    return build_clip("tiny-rn", seed=0).requires_grad_(False).visual.eval()


def poda_loop(visual, f, text, pool, steps, batch=16):
    """PIN_aug.py, written out: per batch of 16 (the last smaller), calc_mean_std (unbiased variance + 1e-5),
    the PIN module (sigma clamped in place before each forward, ReLU), AdaptiveAvgPool2d to the tail grid,
    layer2-4 and the attention pool, the embedding over its detached norm, the batch-mean 1 - cos loss, SGD
    lr 1, momentum 0.9, weight decay 1e-4."""
    mus, sigmas = [], []
    for start in range(0, f.shape[0], batch):
        x = f[start : start + batch]
        n, c = x.shape[:2]
        var = x.reshape(n, c, -1).var(dim=2) + 1e-5
        std = var.sqrt().view(n, c, 1, 1)
        mean = x.reshape(n, c, -1).mean(dim=2).view(n, c, 1, 1)
        norm = (x - mean.expand(x.size())) / std.expand(x.size())
        style_mean = torch.nn.Parameter(mean.clone().detach())
        style_std = torch.nn.Parameter(std.clone().detach())
        optimizer = torch.optim.SGD(
            [{"params": [style_mean, style_std], "lr": 1}], lr=1, momentum=0.9, weight_decay=1e-4
        )
        target = text.repeat(n, 1)
        for _ in range(steps):
            optimizer.zero_grad()
            style_std.data.clamp_(min=0)
            hal = torch.relu(norm * style_std.expand(x.size()) + style_mean.expand(x.size()))
            hal = F.adaptive_avg_pool2d(hal, pool)
            emb = visual.attnpool(visual.layer4(visual.layer3(visual.layer2(hal))))
            emb = emb / emb.norm(dim=-1, keepdim=True).clone().detach()
            loss = (1 - torch.cosine_similarity(target, emb, dim=1)).mean()
            loss.backward()
            optimizer.step()
        mus.append(style_mean.data.flatten(1))
        sigmas.append(style_std.data.flatten(1))
    return torch.cat(mus), torch.cat(sigmas)


@pytest.mark.parametrize("b", [16, 5, 1, 21])
def test_poda_pin_equals_pin_aug(visual, b):
    gen = torch.Generator().manual_seed(b)
    c = visual.layer1[-1].conv3.out_channels
    f = torch.relu(torch.randn(b, c, 24, 20, generator=gen))  # layer1 features are non-negative
    text = F.normalize(torch.randn(visual.output_dim, generator=gen), dim=0)[None]  # [1, D]
    pool = style_grid(visual)
    styles = image_pin(visual, f, text[0], pool, steps=10)  # the default recipe: poda
    mu, sigma = poda_loop(visual, f, text, pool, steps=10)
    assert (
        styles.mu.dtype == torch.float32 and torch.equal(styles.mu, mu) and torch.equal(styles.sigma, sigma)
    )
    assert styles.cos.shape == (b,)
    famix = image_pin(visual, f, text[0], pool, steps=10, recipe="famix")
    assert not torch.equal(famix.mu, mu)  # the recipes differ (famix: per-image lr 0.1, summed loss)
    if b > 16:  # a batch-mean loss: a style depends on its batch of 16
        alone = image_pin(visual, f[16:], text[0], pool, steps=10)
        assert torch.equal(alone.mu, styles.mu[16:])


def test_sigma_is_clamped_before_the_forward():
    gen = torch.Generator().manual_seed(0)
    f_norm = torch.randn(2, 3, 4, 5, generator=gen)
    mu = torch.randn(2, 3, 1, 1, generator=gen)
    sigma = torch.nn.Parameter(torch.tensor([-1.0, 0.5, -0.2]).view(1, 3, 1, 1).repeat(2, 1, 1, 1))
    out = poda_restyle(f_norm, mu, sigma, relu=True)
    clamped = torch.tensor([0.0, 0.5, 0.0]).view(1, 3, 1, 1)
    assert torch.equal(out, torch.relu(f_norm * clamped + mu)) and torch.equal(
        sigma.data, clamped.repeat(2, 1, 1, 1)
    )
    assert torch.equal(
        poda_restyle(f_norm, mu, torch.nn.Parameter(-torch.ones(2, 3, 1, 1)), relu=False),
        mu.expand(2, 3, 4, 5),
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A source model trained as famix trains: colour jitter 0.8, flip 0.5, label smoothing 0.1."""
    out = tmp_path_factory.mktemp("src") / "run"
    cfg = load_config("tiny", ["data.train=synthetic:day:8:size=48", "data.val=[]", "data.crop=32",
                               "style.mix=mixstyle", "train.iterations=2", f"train.out={out}"])  # fmt: skip
    train_stage.run(cfg)
    assert cfg.data.jitter == 0.8 and cfg.data.hflip == 0.5 and cfg.train.label_smoothing == 0.1
    return out / "latest.pt"


def test_poda_fine_tuning_uses_none_of_the_sources_augmentations(source, tmp_path, monkeypatch):
    from famix.engine import train as loop

    seen = {"transforms": [], "smoothing": []}
    real_transform, real_loss = loop.source_transform, loop.SegmentationLoss

    def transform(name, crop, jitter, hflip):
        seen["transforms"].append((crop, jitter, hflip))
        return real_transform(name, crop, jitter, hflip)

    class Loss(real_loss):
        def __init__(self, label_smoothing=0.1, ignore_index=255):
            seen["smoothing"].append(label_smoothing)
            super().__init__(label_smoothing, ignore_index)

    monkeypatch.setattr(loop, "source_transform", transform)
    monkeypatch.setattr(loop, "SegmentationLoss", Loss)
    base = dict(iterations=2, steps=1, images=4, crop=32, batch_size=2, device="cpu", ckpt_interval=2)
    adapt.run(
        source,
        ["night"],
        "synthetic:day:4:size=48",
        tmp_path / "poda",
        settings=adapt.AdaptSettings(**base),
        progress=False,
    )
    assert seen == {"transforms": [(32, 0.0, 0.0)], "smoothing": [0.0]}
    seen.update(transforms=[], smoothing=[])
    famix = adapt.AdaptSettings(**base, recipe="famix")
    adapt.run(
        source, ["night"], "synthetic:day:4:size=48", tmp_path / "famix", settings=famix, progress=False
    )
    assert seen == {"transforms": [(32, 0.8, 0.5)], "smoothing": [0.1]}  # today's: the checkpoint's settings
    stored = {
        "data": {"jitter": 0.8, "hflip": 0.5, "crop": 512, "batch_size": 4},
        "train": {"label_smoothing": 0.1},
    }
    poda = adapt.fine_tune_config(stored, "synthetic:day:4", tmp_path / "x", adapt.AdaptSettings())
    assert (poda.data.crop, poda.data.batch_size, poda.train.iterations, poda.train.lr) == (
        768,
        8,
        2000,
        0.01,
    )
    assert poda.run.amp == "off" and poda.train.poly_power == 0.9 and poda.model.freeze == "backbone"
    kept = adapt.fine_tune_config(
        stored, "synthetic:day:4", tmp_path / "x", adapt.AdaptSettings(recipe="famix")
    )
    assert (kept.data.crop, kept.data.jitter, kept.train.label_smoothing, kept.run.amp) == (
        512,
        0.8,
        0.1,
        "bf16",
    )


def test_resume_with_the_other_recipe_is_refused(source, tmp_path):
    base = dict(iterations=2, steps=1, images=4, crop=32, batch_size=2, device="cpu", ckpt_interval=2)
    adapt.run(
        source,
        ["night"],
        "synthetic:day:4:size=48",
        tmp_path,
        settings=adapt.AdaptSettings(**base),
        progress=False,
    )
    with pytest.raises(FileExistsError, match=r"pin.recipe: 'poda' -> 'famix'"):
        adapt.run(
            source,
            ["night"],
            "synthetic:day:4:size=48",
            tmp_path,
            settings=adapt.AdaptSettings(**base, recipe="famix"),
            progress=False,
        )
    with pytest.raises(ValueError, match="--recipe='exact': choose one of poda, famix"):
        adapt.AdaptSettings(recipe="exact")
