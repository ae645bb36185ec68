"""Seed derivations, one place for each: every random draw of a run is a function of (run.seed, where)."""

from __future__ import annotations

import numpy as np


def item_seed(seed: int, position: int) -> int:
    """The augmentation seed of the item at ``position`` of a sample stream (training, mining)."""
    return seed * 1_000_003 + position


def sequence_seed(seed: int, index: int) -> int:
    """The seed of the ``index``-th generator of a sequence: an epoch's permutation, a mining batch."""
    return seed * 100_003 + index


def step_seed(seed: int, step: int, rank: int) -> int:
    """All randomness of a training step (dropout, style draws) is re-seeded from (seed, step, rank)."""
    return (seed * 1_000_003 + step * 7919 + rank) % (2**63)


# the stream of a step's style draws, apart from the global RNG's (dropout): ``SeedSequence`` spawn key 1
_MIXER_STREAM = 1


def mixer_seed(seed: int, step: int, rank: int) -> int:
    """The style mixer's generator seed at a training step: its own stream, unrelated to
    :func:`step_seed`'s (the global RNG's), so style draws and dropout masks are not the same numbers."""
    entropy = [abs(int(seed)), int(seed < 0), step, rank]
    state = np.random.SeedSequence(entropy, spawn_key=(_MIXER_STREAM,)).generate_state(1, np.uint64)[0]
    return int(state) % (2**63)


# the streams of a several-source run's sources (each its own seeded permutations): ``SeedSequence`` spawn
# key (2, source)
_SOURCE_STREAM = 2


def source_seed(seed: int, source: int, epoch: int) -> int:
    """The seed of the ``epoch``-th permutation of source ``source`` in a several-source run
    (``engine.sampler.MixedStreamSampler``): a stream of each source's own, unrelated to the others'."""
    entropy = [abs(int(seed)), int(seed < 0), epoch]
    state = np.random.SeedSequence(entropy, spawn_key=(_SOURCE_STREAM, source)).generate_state(1, np.uint64)[
        0
    ]
    return int(state) % (2**63)
