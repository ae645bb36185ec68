"""PODA-style zero-shot adaptation: image-level PIN against a per-image loop, and `famix adapt` end to end
(head-only fine-tuning, the bank it records, resume after an interruption, truncated descriptions)."""

import re
import warnings

import pytest
import torch
import torch.nn.functional as F

from famix.cli import main
from famix.engine.checkpoint import load_checkpoint, load_segmenter
from famix.io import file_fingerprint
from famix.models.clip import build_clip
from famix.stages import adapt as adapt_engine
from famix.style.bank import IGNORE_KEY, StyleBank
from famix.style.image_pin import check_description, image_pin

SOURCE = "synthetic:day:8:0:size=48"
TARGET = "driving at night"
SETTINGS = adapt_engine.AdaptSettings(
    iterations=4, steps=3, crop=32, batch_size=2, pin_batch=2, device="cpu", workers=0, ckpt_interval=2
)
CLI_ARGS = ["--iterations", "4", "--steps", "3", "--crop", "32", "--batch-size", "2", "--pin-batch", "2"]
CLI_ARGS += ["--device", "cpu"]


@pytest.fixture(scope="module")
def clip():
    return build_clip("tiny-rn", seed=0).requires_grad_(False)


def slow_image_pin(visual, f, text, pool, steps, lr):
    """The oracle: each image optimised alone, with open_clip's full attention pool."""
    mus, sigmas = [], []
    for x in f.split(1):  # [1, C, H, W]
        mu = x.mean((2, 3))
        sigma = (x.var((2, 3), unbiased=True) + 1e-5).sqrt()
        f_norm = (x - mu[:, :, None, None]) / sigma[:, :, None, None]
        m, s = mu.clone().requires_grad_(True), sigma.clone().requires_grad_(True)
        optimizer = torch.optim.SGD([m, s], lr=lr, momentum=0.9, weight_decay=1e-4)
        for _ in range(steps):
            z = F.relu(s[:, :, None, None] * f_norm + m[:, :, None, None])
            e = visual.attnpool(visual.layer4(visual.layer3(visual.layer2(F.adaptive_avg_pool2d(z, pool)))))
            loss = 1 - F.cosine_similarity(e, text[None], dim=-1)
            optimizer.zero_grad()
            loss.sum().backward()
            optimizer.step()
        mus.append(m.detach())
        sigmas.append(s.detach())
    return torch.cat(mus), torch.cat(sigmas)


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 40, 24)])
def test_image_pin_matches_per_image_loop(clip, shape):
    b, h, w = shape
    g = torch.Generator().manual_seed(b)
    visual = clip.visual
    # random features, not layer1's: at its exact zeros the initial restyle sits on ReLU's kink, where
    # rounding (of mu, sigma) alone decides the gradient
    c = visual.layer1[-1].conv3.out_channels
    f = torch.randn(b, c, h // 4, w // 4, generator=g) * torch.rand(1, c, 1, 1, generator=g) + 0.5
    text = F.normalize(torch.randn(clip.text_projection.shape[1], generator=g), dim=0)
    styles = image_pin(visual, f, text, pool=16, steps=5, lr=0.1, recipe="famix")
    mu, sigma = slow_image_pin(visual, f, text, 16, 5, 0.1)
    assert styles.mu.shape == styles.sigma.shape == (b, f.shape[1]) and styles.cos.shape == (b,)
    torch.testing.assert_close(styles.mu, mu, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(styles.sigma, sigma, atol=1e-5, rtol=1e-4)
    assert not torch.equal(styles.mu, f.mean((2, 3)))  # the styles moved from the images' own


@pytest.fixture(scope="module")
def adapted(checkpoint, tmp_path_factory):
    """A straight `famix adapt` run (CLI) on the tiny checkpoint: its run folder."""
    out = tmp_path_factory.mktemp("adapt")
    main(["adapt", str(checkpoint), "--target", TARGET, "--data", SOURCE, "--out", str(out), *CLI_ARGS])
    return out / adapt_engine.slug(TARGET)


def test_adapt_changes_only_the_head(checkpoint, adapted):
    before = load_checkpoint(checkpoint)["model_state"]
    ckpt = load_checkpoint(adapted / "latest.pt")
    after = ckpt["model_state"]
    assert ckpt["cur_itrs"] == SETTINGS.iterations and ckpt["run"]["kind"] == "adapt"
    assert ckpt["run"]["inputs"]["checkpoint"] == file_fingerprint(checkpoint)
    assert ckpt["run"]["inputs"]["bank"] == file_fingerprint(adapted / "styles.safetensors")
    best = load_checkpoint(adapted / "best.pt")  # validated at the end only: best.pt is the adapted model
    assert best["cur_itrs"] == SETTINGS.iterations
    assert set(before) == set(after)
    backbone = [k for k in before if k.startswith("backbone.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)
    head = [k for k in before if k.startswith("classifier.") and before[k].is_floating_point()]
    assert any(not torch.equal(before[k], after[k]) for k in head)
    model, cfg = load_segmenter(adapted / "latest.pt")  # as `famix eval` / `predict` load it
    assert cfg.freeze == "backbone" and model(torch.zeros(1, 3, 32, 32)).shape == (1, cfg.num_classes, 32, 32)


def test_adapt_bank_records_description_and_checks_width(adapted):
    bank = StyleBank.load(adapted / "styles.safetensors")
    assert bank.metadata["description"] == TARGET
    counts = bank.counts()
    assert counts[IGNORE_KEY] == 8 and sum(counts.values()) == 8  # one style per source crop, all "ignore"
    bank.check_compatible(bank.channels, bank.class_names)
    with pytest.raises(ValueError, match="channel"):
        bank.check_compatible(bank.channels * 2, bank.class_names)


def test_adapt_resumes_after_interruption(checkpoint, adapted, tmp_path, monkeypatch):
    calls = []
    from famix.engine import train as train_module

    real_step = train_module.train_step

    def failing_step(*args):
        calls.append(1)
        if len(calls) == 3:  # after the checkpoint at step 2
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(train_module, "train_step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        adapt_engine.run(checkpoint, [TARGET], SOURCE, tmp_path, settings=SETTINGS, progress=False)
    assert load_checkpoint(tmp_path / adapt_engine.slug(TARGET) / "latest.pt")["cur_itrs"] == 2
    monkeypatch.setattr(train_module, "train_step", real_step)
    written = adapt_engine.run(checkpoint, [TARGET], SOURCE, tmp_path, settings=SETTINGS, progress=False)
    resumed = load_checkpoint(written[TARGET])["model_state"]
    straight = load_checkpoint(adapted / "latest.pt")["model_state"]
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    other = adapt_engine.AdaptSettings(**{**vars(SETTINGS), "lr": 0.05})
    with pytest.raises(FileExistsError, match="train.lr"):
        adapt_engine.run(checkpoint, [TARGET], SOURCE, tmp_path, settings=other, progress=False)


def test_adapt_mining_resumes_after_interruption(checkpoint, adapted, tmp_path, monkeypatch):
    """A mining pass killed after its first saved batch resumes there: the bank equals an unbroken pass's."""
    real_pin, calls = adapt_engine.image_pin, []

    def failing_pin(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_pin(*args, **kwargs)

    settings = adapt_engine.AdaptSettings(**{**vars(SETTINGS), "save_every": 1})
    monkeypatch.setattr(adapt_engine, "image_pin", failing_pin)
    with pytest.raises(KeyboardInterrupt):
        adapt_engine.run(checkpoint, [TARGET], SOURCE, tmp_path, settings=settings, progress=False)
    path = tmp_path / adapt_engine.slug(TARGET) / "styles.safetensors"
    partial = StyleBank.load(path)
    assert partial.metadata["batches_done"] == 1 and len(partial) == SETTINGS.batch_size
    monkeypatch.setattr(adapt_engine, "image_pin", real_pin)
    adapt_engine.run(checkpoint, [TARGET], SOURCE, tmp_path, settings=settings, progress=False)
    resumed, straight = StyleBank.load(path), StyleBank.load(adapted / "styles.safetensors")
    assert len(resumed) == len(straight) == 8
    a, b = resumed.packed(), straight.packed()
    assert torch.equal(a.mu, b.mu) and torch.equal(a.sigma, b.sigma)


def test_truncated_description_warns():
    assert check_description(TARGET, 16)
    long = "driving through a dense fog at night on a wet road with many bright oncoming headlights"
    with pytest.warns(UserWarning, match=re.escape(repr(long))):
        assert not check_description(long, 16)


def test_style_layers_of_another_clip_warn(checkpoint):
    model, _ = load_segmenter(checkpoint)
    same = build_clip("tiny-rn", seed=0).visual  # the checkpoint's random CLIP (seed 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adapt_engine._check_style_layers(model, same, None)
    other = build_clip("tiny-rn", seed=1).visual
    with pytest.warns(UserWarning, match="style-map layers differ"):
        adapt_engine._check_style_layers(model, other, None)


def test_a_stop_asked_in_mining_s_last_round_stops_adapt_before_fine_tuning(
    checkpoint, tmp_path, monkeypatch
):
    """SIGTERM while the last round of mining runs: the bank is finished and saved, and famix adapt stops
    there (Interrupted) rather than losing the request and fine-tuning on."""
    import os
    import signal

    from famix.engine.interrupt import Interrupted

    real_pin = adapt_engine.image_pin

    def pin_then_sigterm(*args, **kwargs):
        styles = real_pin(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # caught by mining's handler: a stop request, no exit
        return styles

    settings = adapt_engine.AdaptSettings(**{**vars(SETTINGS), "images": 2})  # one batch: the last round
    monkeypatch.setattr(adapt_engine, "image_pin", pin_then_sigterm)
    with pytest.raises(Interrupted, match="mining finished"):
        adapt_engine.run(checkpoint, [TARGET], SOURCE, tmp_path, settings=settings, progress=False)
    run = tmp_path / adapt_engine.slug(TARGET)
    assert StyleBank.load(run / "styles.safetensors").metadata["batches_done"] == 1
    assert not (run / "latest.pt").exists()  # fine-tuning never started
