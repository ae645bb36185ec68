"""An exactly resumable, rank-sharded sample stream for iteration-based training, over one source or several.

The stream is the concatenation of seeded permutations of the dataset (one per epoch). Global batch t
covers positions [t * B * W, (t + 1) * B * W); rank r takes its B consecutive positions. Each position
also carries an augmentation seed. Hence the data of step t depends only on (seed, t), not on how many
steps ran before a resume, nor on the number of workers. (torch's DistributedSampler cannot resume
mid-epoch, which exact resume needs.)

Several sources (``data.train`` a list): an epoch is still ``sum(lengths)`` positions, of which source k
fills exactly its share (:class:`SourceMix`: by ``data.train_weights``, else its size), at slots spread
evenly over the epoch; its slots take the next items of its own stream of seeded permutations. The stream
stays a function of (seed, position), so resuming, ranks and workers behave as with one source.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch.utils.data import Sampler

from famix.engine.seeds import item_seed, sequence_seed, source_seed


class StreamSampler(Sampler[tuple[int, int]]):
    def __init__(
        self,
        length: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        steps: int | None = None,
    ):
        if length < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.rank, self.world_size, self.start_step, self.steps = rank, world_size, start_step, steps
        self._perm: tuple[int, torch.Tensor] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(sequence_seed(self.seed, epoch))
            self._perm = (epoch, torch.randperm(self.length, generator=g))
        return self._perm[1]

    def position(self, step: int, j: int) -> int:
        """Global stream position of the j-th sample of this rank at step ``step``."""
        return (step * self.world_size + self.rank) * self.batch_size + j

    def item(self, q: int) -> tuple[int, int]:
        """The item at stream position ``q``: (dataset index, augmentation seed)."""
        epoch, i = divmod(q, self.length)
        return int(self._permutation(epoch)[i]), item_seed(self.seed, q)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step = self.start_step
        while self.steps is None or step < self.steps:
            for j in range(self.batch_size):
                yield self.item(self.position(step, j))
            step += 1

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an endless StreamSampler has no length")
        return (self.steps - self.start_step) * self.batch_size


def allocate(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split into whole counts in proportion to ``weights`` (largest remainders; equal remainders
    favour the earlier weight): the counts sum to ``total`` and each is within one of its exact share.
    Computed exactly (on the weights' binary values): rounding never decides a tie."""
    exact = [Fraction(w) for w in weights]
    quotas = [total * w / sum(exact) for w in exact]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda k: (counts[k] - quotas[k], k))
    for k in by_remainder[: total - sum(counts)]:
        counts[k] += 1
    return counts


@dataclass(frozen=True)
class SourceMix:
    """One epoch of several sources: ``sum(lengths)`` slots, ``counts[k]`` of them source k's. Source k's
    j-th slot sits at (j + 1/2) / counts[k] of the epoch (ties: the earlier source first), so the sources
    are spread evenly over it: every batch holds each source about in proportion, not only the epoch."""

    lengths: tuple[int, ...]
    counts: tuple[int, ...]
    sources: tuple[int, ...]  # [sum(lengths)]: the source of each slot
    ranks: tuple[int, ...]  # [sum(lengths)]: each slot's index among its source's slots of the epoch

    @classmethod
    def of(cls, lengths: Sequence[int], weights: Sequence[float] | None = None) -> SourceMix:
        """The mix of sources of ``lengths`` images with shares ``weights`` (None: their sizes, each image
        once per epoch)."""
        if not lengths or min(lengths) < 1:
            raise ValueError(f"cannot sample from an empty source (sizes {list(lengths)})")
        if weights is not None and (len(weights) != len(lengths) or min(weights) <= 0):
            raise ValueError(f"weights {list(weights)}: give one number > 0 per source ({len(lengths)})")
        counts = list(lengths) if weights is None else allocate(sum(lengths), weights)
        slots = sorted(
            ((Fraction(2 * j + 1, 2 * n), k, j) for k, n in enumerate(counts) for j in range(n)),
        )
        return cls(tuple(lengths), tuple(counts), tuple(s[1] for s in slots), tuple(s[2] for s in slots))

    @property
    def offsets(self) -> list[int]:
        """Where each source starts in the concatenation of the sources."""
        return [sum(self.lengths[:k]) for k in range(len(self.lengths))]

    def in_order(self) -> list[int]:
        """The epoch's slots as indices of the concatenation, each source's images in their own order
        (cycling where its share is more than its size): how ``famix mine`` walks several sources."""
        offsets = self.offsets
        return [offsets[k] + j % self.lengths[k] for k, j in zip(self.sources, self.ranks, strict=True)]


class MixedStreamSampler(StreamSampler):
    """:class:`StreamSampler` over several sources concatenated (``SeededSources``): epoch e's slot i of
    source k (``mix.ranks[i]`` = j) takes position e * counts[k] + j of source k's own stream, seeded
    permutations of its images one after another (``seeds.source_seed``); items are (index in the
    concatenation, augmentation seed)."""

    def __init__(
        self,
        mix: SourceMix,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        steps: int | None = None,
    ):
        super().__init__(sum(mix.lengths), batch_size, seed, rank, world_size, start_step, steps)
        self.mix, self.offsets = mix, mix.offsets
        self._source_perms: dict[int, tuple[int, torch.Tensor]] = {}

    def _source_permutation(self, k: int, epoch: int) -> torch.Tensor:
        cached = self._source_perms.get(k)
        if cached is None or cached[0] != epoch:
            g = torch.Generator().manual_seed(source_seed(self.seed, k, epoch))
            cached = self._source_perms[k] = (epoch, torch.randperm(self.mix.lengths[k], generator=g))
        return cached[1]

    def item(self, q: int) -> tuple[int, int]:
        epoch, i = divmod(q, self.length)
        k = self.mix.sources[i]
        own_epoch, j = divmod(epoch * self.mix.counts[k] + self.mix.ranks[i], self.mix.lengths[k])
        return self.offsets[k] + int(self._source_permutation(k, own_epoch)[j]), item_seed(self.seed, q)


def stream_sampler(
    lengths: Sequence[int], weights: Sequence[float] | None, batch_size: int, **kw
) -> StreamSampler:
    """The training stream of sources of ``lengths`` images: one source's :class:`StreamSampler` (weights
    change nothing), several sources' :class:`MixedStreamSampler`; ``kw``: seed, rank, world_size,
    start_step, steps."""
    if len(lengths) == 1:
        return StreamSampler(lengths[0], batch_size, **kw)
    return MixedStreamSampler(SourceMix.of(lengths, weights), batch_size, **kw)
