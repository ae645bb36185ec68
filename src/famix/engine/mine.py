"""The mining pass: a style bank filled batch by batch over a source set, resumable and rank-sharded; the pass
that ``famix mine`` (patch-level PIN, per class) and ``famix adapt`` (image-level PIN toward one target)
share. What a batch's styles are is the caller's ``step``.

``batch_size`` crops make a batch (the unit of the step's randomness, of resuming and of the bank's order);
``per_call`` batches go to one ``step`` call, which sets only speed and memory. Under ``torchrun`` batch b
is mined by rank b % world_size and rank 0 writes the bank, the same as one process writes. The bank is
saved (atomically) every ``save_every`` batches and at the end, with ``batches_done`` and ``images`` in its
metadata: an interrupted pass resumes after the batches it saved.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from famix.data.trainids import IGNORE_INDEX
from famix.engine.distributed import DistInfo, barrier, current, require_session
from famix.engine.interrupt import Interrupted, any_rank, stop_requests
from famix.engine.seeds import item_seed
from famix.progress import progress_bar
from famix.style.bank import StyleBank
from famix.style.patch_mining import MinedStyles

# A step: this rank's batches of one call, [(batch index, images uint8 [B, 3, H, W], labels [B, H, W])]
# -> their styles (on the CPU), one MinedStyles per batch, in order
Step = Callable[[list[tuple[int, torch.Tensor, torch.Tensor]]], list[MinedStyles]]


@dataclass(frozen=True)
class MiningPlan:
    """How a pass walks its source set: ``images`` crops (the first ones) in batches of ``batch_size``,
    item i seeded by ``item_seed(seed, i)``; ``per_call`` batches per step call (per rank); a save every
    ``save_every`` batches; ``workers`` loader processes."""

    images: int
    batch_size: int
    seed: int
    save_every: int
    per_call: int = 1
    workers: int = 0

    @property
    def batches(self) -> int:
        return math.ceil(self.images / self.batch_size)


def plan_images(dataset_size: int, max_images: int | None) -> int:
    """The crops a pass mines: ``max_images`` of the source set (all when None)."""
    return min(dataset_size, max_images or dataset_size)


def mine_pass(
    dataset, bank: StyleBank, path: str | Path, plan: MiningPlan, step: Step, desc: str, progress: bool = True
) -> StyleBank:
    """Mine ``dataset`` (items ``(index, seed)``: a ``SeededTransform``) from the bank's ``batches_done`` on,
    appending each batch's styles to ``bank`` in batch order and saving it to ``path``. Under torchrun
    (inside ``distributed.session()``) every rank mines its share; rank 0 returns the whole bank."""
    info = current()
    require_session(info, "mining")
    size, batches = plan.batch_size, plan.batches
    start = bank.batches_done
    # this rank's share: batch b goes to rank b % world, whatever the start, so a resume may use another world
    share = range(info.rank, batches, info.world_size)
    todo = [b for b in share if b >= start]
    items = [
        (i, item_seed(plan.seed, i)) for b in todo for i in range(b * size, min(b * size + size, plan.images))
    ]
    loader = iter(DataLoader(dataset, batch_size=size, sampler=items, num_workers=plan.workers))
    desc = f"{desc} (rank {info.rank})" if info.enabled else desc
    bar = progress_bar(total=len(share), initial=len(share) - len(todo), desc=desc, disable=not progress)
    # a round: per_call batches per rank, one step call each; rank 0 appends the round in batch order and
    # saves at round ends, so batches_done stays a batch count (and the bank that of one process)
    per_round = plan.per_call * info.world_size
    with stop_requests() as asked:  # Ctrl-C / SIGTERM: stop at a round's end, the bank saved
        for first in range(start, batches, per_round):
            last = min(first + per_round, batches)
            own = [b for b in todo if first <= b < last]
            mined = step([(b, *next(loader)[:2]) for b in own]) if own else []
            bar.update(len(own))
            mined_here = _gather_on_main(list(zip(own, mined, strict=True)), info)  # rank 0: every rank's
            if info.main:
                for _, styles in sorted((p for part in mined_here for p in part), key=lambda p: p[0]):
                    bank.add(styles.mu, styles.sigma, styles.classes, IGNORE_INDEX)
                bank.mark_progress(last, min(last * size, plan.images))
                if last // plan.save_every > first // plan.save_every:  # passed a multiple of save_every
                    bank.save(path)
            if mined:
                cos = torch.cat([s.cos for s in mined]).mean().item()
                bar.set_postfix(**({"styles": len(bank)} if info.main else {}), cos=f"{cos:.3f}")
            if last < batches and any_rank(asked()):
                bar.close()
                if info.main:
                    bank.save(path)
                barrier()
                raise Interrupted(
                    f"stopped after {last} of {batches} batches; {path} holds them: run the same command "
                    "to resume"
                )
        stop = any_rank(asked())  # asked during the last round: the pass is whole, but the stop stands
    bar.close()
    if info.main:
        bank.save(path)
    barrier()
    if stop:  # a composite (famix adapt) must not go on to its next stage after a Ctrl-C / SIGTERM
        raise Interrupted(f"stopped after mining finished; {path} is complete: run the same command to go on")
    return bank


def _gather_on_main(part: list, info: DistInfo) -> list[list]:
    """Every rank's ``part`` (a picklable list), in rank order, on rank 0 (elsewhere: an empty list)."""
    if not info.enabled:
        return [part]
    parts = [None] * info.world_size if info.main else None
    dist.gather_object(part, parts, dst=0)
    return parts or []
