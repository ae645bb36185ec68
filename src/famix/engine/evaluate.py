"""Semantic-segmentation evaluation: confusion matrices, (m)IoU, pixel accuracies, and the one evaluation
loop that the CLI, training-time validation and the demo share (:func:`evaluate_specs`).

Every mIoU / IoU / accuracy famix reports (tables, JSON, metrics.jsonl) is in percent. Tables and result
files are in :mod:`famix.engine.results`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from functools import partial

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from famix.data.datasets import build_dataset
from famix.data.label_sets import LabelSet
from famix.engine.inference import eval_mode, model_input, predict_logits
from famix.models.segmenter import Restyle
from famix.progress import progress_bar
from famix.settings import PLAIN, InferenceSettings

# A test-time condition: normalised images [B, 3, H, W] -> the restyle hook that gives their style maps the
# condition's look (stages/evaluate.py mines it by image-level PIN, which needs gradients)
Condition = Callable[[torch.Tensor], Restyle]


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Confusion matrix [K, K] int64 (rows = ground truth, cols = prediction) on the inputs' device.

    Pixels whose label is the ignore index (255) or otherwise outside [0, K) are skipped; so are
    (invalid) predictions outside [0, K), which would otherwise spill into the next row.
    One ``torch.bincount`` over a masked flat index: no host synchronisation.
    """
    if pred.shape != label.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != label shape {tuple(label.shape)}")
    k = num_classes
    pred = pred.reshape(-1).long()  # [N]
    label = label.reshape(-1).long()  # [N]
    valid = (label >= 0) & (label < k) & (pred >= 0) & (pred < k)
    # Invalid pixels go to an extra bin k*k that is dropped: no boolean indexing (which would sync).
    index = torch.where(valid, label * k + pred, k * k)
    return torch.bincount(index, minlength=k * k + 1)[: k * k].reshape(k, k)


def group_confusion(cm: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """The confusion matrix of merged classes: cm [K, K] (rows ground truth) and ``groups`` [K] (class ->
    its group in [0, G)) -> [G, G], entry (a, b) the sum of cm[i, j] over classes i of a and j of b."""
    member = torch.nn.functional.one_hot(groups.long(), num_groups).to(cm.dtype)  # [K, G]
    return member.T @ cm @ member


def iou_from_confusion(cm: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Per-class IoU = TP / (TP + FP + FN) and their mean over classes with a non-empty union.

    Returns ``(miou, per_class)`` as fractions, ``per_class`` float64 [K] with nan for classes that are
    neither present nor predicted; a class predicted but absent from the ground truth scores 0.
    ``miou`` is nan when every union is empty.
    """
    cm = cm.double()
    tp = cm.diagonal()  # [K]
    union = cm.sum(0) + cm.sum(1) - tp  # TP+FP + TP+FN - TP
    per_class = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))
    miou = per_class.nanmean().item() if bool((union > 0).any()) else math.nan
    return miou, per_class


def accuracy_from_confusion(cm: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """mmsegmentation's pixel accuracies of a confusion matrix [K, K] (rows ground truth), as fractions.

    Returns ``(aacc, macc, per_class)``: ``aacc`` = trace / all labelled pixels; ``per_class`` float64 [K]
    = diagonal / row sum (the class's recall), nan for classes absent from the ground truth; ``macc`` its
    mean over the classes present. Both means are nan when nothing is labelled.
    """
    cm = cm.double()
    tp = cm.diagonal()  # [K]
    labelled = cm.sum(1)  # [K] ground-truth pixels per class
    total = labelled.sum().item()
    per_class = torch.where(labelled > 0, tp / labelled.clamp_min(1), torch.full_like(tp, math.nan))
    aacc = tp.sum().item() / total if total > 0 else math.nan
    macc = per_class.nanmean().item() if total > 0 else math.nan
    return aacc, macc, per_class


def _percents(per_class: torch.Tensor) -> list[float | None]:
    """Fractions [K] -> percents, None where nan (a class without pixels)."""
    return [None if math.isnan(v) else 100 * v for v in per_class.tolist()]


@dataclass
class EvalResult:
    """Outcome of :func:`evaluate`: mIoU and per-class IoU in percent (None = class absent), confusion
    [K, K] (rows ground truth, columns prediction), and the pixel accuracies derived from it."""

    miou: float
    per_class_iou: list[float | None]
    confusion: list[list[int]]
    num_images: int

    # The accuracies are properties of ``confusion``, not fields: results cached by earlier famix versions
    # (without them) read back with them, and they can never disagree with the matrix.
    def _accuracies(self) -> tuple[float, float, torch.Tensor]:
        k = len(self.confusion)
        return accuracy_from_confusion(torch.tensor(self.confusion, dtype=torch.float64).reshape(k, k))

    @property
    def aacc(self) -> float:
        """Overall pixel accuracy (%): correctly labelled / labelled pixels; nan when nothing is labelled."""
        return 100 * self._accuracies()[0]

    @property
    def macc(self) -> float:
        """Mean per-class accuracy (%) over the classes present in the ground truth; nan when none is."""
        return 100 * self._accuracies()[1]

    @property
    def per_class_acc(self) -> list[float | None]:
        """Per-class accuracy (%) = diagonal / row sum; None for a class with no ground-truth pixel."""
        return _percents(self._accuracies()[2])

    @classmethod
    def from_confusion(cls, cm: torch.Tensor, num_images: int) -> EvalResult:
        cm = cm.cpu()  # the evaluation's one device -> host copy
        miou, per_class = iou_from_confusion(cm)
        return cls(
            miou=100 * miou,
            per_class_iou=_percents(per_class),
            confusion=cm.tolist(),
            num_images=num_images,
        )

    @classmethod
    def from_dict(cls, d: dict) -> EvalResult:
        """The inverse of :meth:`to_dict` (a None mIoU, nothing labelled, is nan again). The derived keys
        (accuracies) are ignored, so dicts with or without them (earlier famix versions) read alike."""
        kept = {f.name: d[f.name] for f in fields(cls)}
        return cls(**{**kept, "miou": math.nan if d["miou"] is None else d["miou"]})

    def to_dict(self) -> dict:
        """A JSON-serialisable dict: the fields, then the accuracies for JSON readers (nan becomes None)."""
        aacc, macc, per_class = self._accuracies()
        d = {**asdict(self), "aacc": 100 * aacc, "macc": 100 * macc, "per_class_acc": _percents(per_class)}
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def collate_by_size(
    items: list[tuple[torch.Tensor, torch.Tensor]],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A DataLoader ``collate_fn`` for evaluation: items of one image size are stacked into one batch, so a
    batch of a dataset with images of several sizes becomes one (images, labels) batch per size."""
    groups: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for image, label in items:
        groups.setdefault(tuple(image.shape), []).append((image, label))
    return [(torch.stack([i for i, _ in g]), torch.stack([t for _, t in g])) for g in groups.values()]


def evaluate(
    model: torch.nn.Module,
    loader: Iterable,
    num_classes: int,
    device: str | torch.device = "cpu",
    tta: InferenceSettings = PLAIN,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    desc: str = "eval",
    reduce: bool = True,
    condition: Condition | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``loader`` batches ``(images [B,3,H,W], labels [B,H,W])`` and return IoUs.

    Images are uint8 (normalised here, on the device) or already CLIP-normalised floats; a batch may also
    be a list of such batches (:func:`collate_by_size`). Logits are predicted at the label size with the
    test-time settings ``tta``; the confusion matrix stays on the device until the end (one host copy
    per evaluation). Under torch.distributed each rank evaluates its shard and the matrices are summed
    (``reduce=False`` when only one rank evaluates). The model's train/eval states are restored afterwards.
    ``condition``: each batch's images are seen through the restyle hook it returns for them (labels
    unchanged); it runs outside inference mode (its mining takes gradients), the prediction inside.
    """
    device = torch.device(device)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    num_images = 0
    show = progress and (not _distributed() or dist.get_rank() == 0)
    channels_last = device.type == "cuda"
    with eval_mode(model), torch.inference_mode(condition is None):
        bar = progress_bar(loader, desc=desc, disable=not show)
        for batch in bar:
            for images, labels in batch if isinstance(batch, list) else [batch]:
                images = images.to(device, non_blocking=True)  # [B, 3, H, W]
                labels = labels.to(device, non_blocking=True)  # [B, H, W]
                if images.dtype == torch.uint8:
                    images = model_input(model, images)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                seen = model if condition is None else partial(model, restyle=condition(images))
                with torch.inference_mode():
                    logits = predict_logits(seen, images, tta, labels.shape[-2:], amp_dtype)
                    cm += confusion_matrix(logits.argmax(1), labels, num_classes)  # argmax: [B, H, W]
                num_images += images.shape[0]
        bar.close()
    if reduce and _distributed():
        counts = torch.tensor([num_images], dtype=torch.int64, device=device)
        dist.all_reduce(cm, op=dist.ReduceOp.SUM)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        num_images = int(counts.item())
    return EvalResult.from_confusion(cm, num_images)


def evaluate_specs(
    model: torch.nn.Module,
    specs: Sequence[str],
    num_classes: int,
    device: str | torch.device = "cpu",
    tta: InferenceSettings = PLAIN,
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 1,
    workers: int = 0,
    progress: bool = True,
    reduce: bool = True,
    labels: LabelSet | None = None,
    group: LabelSet | None = None,
    condition: Condition | None = None,
) -> dict[str, EvalResult]:
    """:func:`evaluate` on each dataset spec in turn: ``{spec: EvalResult}`` in the order given.

    Each dataset (and its loader workers) is built just before its evaluation, so only one is alive at
    a time. Workers hand over uint8 images and labels; normalisation runs on the device. Images of
    different sizes within a batch are evaluated as one batch per size. Under torch.distributed (with
    ``reduce``) rank r evaluates images r, r + N, r + 2N... and the confusion matrices are summed: the
    same result as one process, for any split. Labels are read through the model's label set ``labels``
    (None: the 19 trainIds); ``group``: report IoUs per class of that label set, whose ``ids`` are the
    model's class indices (:func:`group_confusion`); ``condition``: see :func:`evaluate`.
    """
    results = {}
    for spec in specs:
        dataset = build_dataset(spec, labels)
        if reduce and _distributed():
            dataset = Subset(dataset, range(dist.get_rank(), len(dataset), dist.get_world_size()))
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate_by_size,
            pin_memory=torch.device(device).type == "cuda",
        )
        result = evaluate(
            model, loader, num_classes, device, tta, amp_dtype, progress, desc=spec, reduce=reduce,
            condition=condition,
        )  # fmt: skip
        if group is not None:
            grouped = group_confusion(
                torch.tensor(result.confusion), group.group_lut(num_classes), len(group)
            )
            result = EvalResult.from_confusion(grouped, result.num_images)
        results[spec] = result
    return results
