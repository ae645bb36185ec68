"""Seed derivations: the style mixer's stream is not the global RNG's (style draws and dropout masks of a
step must not be the same random numbers)."""

import itertools

import torch

from famix.engine.seeds import mixer_seed, step_seed


def test_mixer_stream_is_apart_from_the_step_stream():
    keys = list(itertools.product([0, 1, -1, 7], [1, 2, 750, 40_000], [0, 1, 3]))
    mixer = [mixer_seed(*k) for k in keys]
    assert len(set(mixer)) == len(keys)  # one seed per (seed, step, rank)
    assert all(0 <= m < 2**63 for m in mixer) and mixer == [mixer_seed(*k) for k in keys]  # deterministic
    assert not set(mixer) & {step_seed(*k) for k in keys}
    for k in keys[:6]:  # the first draws of the two generators differ
        a = torch.rand(8, generator=torch.Generator().manual_seed(step_seed(*k)))
        b = torch.rand(8, generator=torch.Generator().manual_seed(mixer_seed(*k)))
        assert not torch.equal(a, b)
