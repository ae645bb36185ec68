"""An exactly resumable, rank-sharded sample stream for iteration-based training.

The stream is the concatenation of seeded permutations of the dataset (one per epoch). Global batch t
covers positions [t * B * W, (t + 1) * B * W); rank r takes its B consecutive positions. Each position
also carries an augmentation seed. Hence the data of step t depends only on (seed, t), not on how many
steps ran before a resume, nor on the number of workers. (torch's DistributedSampler cannot resume
mid-epoch, which exact resume needs.)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from famix.engine.seeds import item_seed, sequence_seed


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

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step = self.start_step
        while self.steps is None or step < self.steps:
            for j in range(self.batch_size):
                q = self.position(step, j)
                epoch, i = divmod(q, self.length)
                yield int(self._permutation(epoch)[i]), item_seed(self.seed, q)
            step += 1

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an endless StreamSampler has no length")
        return (self.steps - self.start_step) * self.batch_size
