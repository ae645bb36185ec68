"""Semantic-segmentation evaluation: confusion matrices, (m)IoU, multi-scale inference, the eval loop.

Tables and result files are in :mod:`famix.engine.results`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from famix.data.labels import NUM_CLASSES
from famix.engine.sliding import sliding_logits

# How often (in batches) the progress bar's running mIoU is refreshed; each refresh syncs the device.
_POSTFIX_EVERY = 10


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Confusion matrix [K, K] int64 (rows = ground truth, cols = prediction) on the inputs' device.

    Pixels whose label is the ignore index (255) or otherwise outside [0, K) are skipped; so are
    (invalid) predictions outside [0, K), which would otherwise spill into the next row.
    Fully vectorised (one ``torch.bincount``), no host synchronisation.
    """
    if pred.shape != label.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != label shape {tuple(label.shape)}")
    k = num_classes
    pred = pred.reshape(-1).long()  # [N]
    label = label.reshape(-1).long()  # [N]
    valid = (label >= 0) & (label < k) & (pred >= 0) & (pred < k)
    # Boolean indexing keeps it sync-free w.r.t. Python; bincount of label*K+pred is the flat matrix.
    index = label[valid] * k + pred[valid]
    return torch.bincount(index, minlength=k * k).reshape(k, k)


def iou_from_confusion(cm: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Per-class IoU = TP / (TP + FP + FN) and their mean over classes with a non-empty union.

    Returns ``(miou, per_class)`` where ``per_class`` is float64 [K] with nan for classes that are
    neither present nor predicted; a class predicted but absent from the ground truth scores 0.
    ``miou`` is nan when every union is empty.
    """
    cm = cm.double()
    tp = cm.diagonal()  # [K]
    union = cm.sum(0) + cm.sum(1) - tp  # TP+FP + TP+FN - TP
    per_class = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))
    miou = per_class.nanmean().item() if bool((union > 0).any()) else math.nan
    return miou, per_class


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def predict_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    scale: float | None = None,
    ensemble: bool = False,
    out_size: Sequence[int] | None = None,
    window: int | None = None,
    stride: int | None = None,
) -> torch.Tensor:
    """Run ``model`` on normalised ``images`` [B, 3, H, W] and return logits [B, K, *out_size].

    ``scale`` s is a resize factor for the input (0.5 = half resolution; bilinear, align_corners=True),
    the logits are resized back to ``out_size`` (default: the input size). With ``ensemble`` the logits
    of scale 1 and scale s are averaged. Scale None / 1 runs the model on the input as is.
    With ``window`` each (scaled) input is segmented by :func:`~famix.engine.sliding.sliding_logits`
    in overlapping ``window``-pixel tiles ``stride`` apart, for images too large for memory.
    """
    h, w = images.shape[-2:]
    size = (h, w) if out_size is None else tuple(out_size)

    def run(s: float) -> torch.Tensor:
        x = images
        if s != 1.0:
            # round() so that e.g. 1024 * 0.5 is exactly 512 and odd sizes do not drift.
            x = _resize(images, (max(1, round(h * s)), max(1, round(w * s))))
        logits = model(x) if window is None else sliding_logits(model, x, window, stride)
        return _resize(logits, size)  # [B, K, *size]

    s = 1.0 if scale is None else float(scale)
    if not ensemble or s == 1.0:
        return run(s)
    # float() so averaging under autocast does not lose precision in half types.
    return (run(1.0).float() + run(s).float()) / 2


@dataclass
class EvalResult:
    """Outcome of :func:`evaluate`: mIoU in [0, 1], per-class IoU (None = class absent), raw confusion."""

    miou: float
    per_class_iou: list[float | None]
    confusion: list[list[int]]
    num_images: int

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (nan mIoU becomes None)."""
        d = asdict(self)
        if math.isnan(d["miou"]):
            d["miou"] = None
        return d


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode, then restore every submodule's own ``training`` flag exactly.

    ``model.train()`` would not do: some submodules (frozen backbone, BN) are deliberately kept in
    eval during training and must stay that way.
    """
    saved = {name: m.training for name, m in model.named_modules()}
    model.eval()
    try:
        yield model
    finally:
        for name, m in model.named_modules():
            if name in saved:
                m.training = saved[name]


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None):
    """``torch.autocast`` on ``device`` with ``amp_dtype``, or a no-op context when it is None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def evaluate(
    model: torch.nn.Module,
    loader: Iterable,
    num_classes: int = NUM_CLASSES,
    device: str | torch.device = "cpu",
    scale: float | None = None,
    ensemble: bool = False,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    desc: str = "eval",
    reduce: bool = True,
    window: int | None = None,
    stride: int | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``loader`` batches ``(images [B,3,H,W], labels [B,H,W])`` and return IoUs.

    Logits are predicted at the label size (see :func:`predict_logits` for ``scale``/``ensemble`` and
    the sliding ``window``/``stride``).
    Under torch.distributed each rank evaluates its shard and the confusion matrices are summed (set
    ``reduce=False`` when only one rank evaluates, as training's validation does). The model's
    per-submodule train/eval state is restored afterwards.
    """
    device = torch.device(device)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    num_images = 0
    show = progress and (not _distributed() or dist.get_rank() == 0)
    with eval_mode(model), torch.inference_mode():
        bar = tqdm(loader, desc=desc, disable=not show, dynamic_ncols=True)
        for i, batch in enumerate(bar):
            images, labels = batch[0], batch[1]
            images = images.to(device, non_blocking=True)  # [B, 3, H, W]
            labels = labels.to(device, non_blocking=True)  # [B, H, W]
            with autocast_context(device, amp_dtype):
                logits = predict_logits(model, images, scale, ensemble, labels.shape[-2:], window, stride)
            cm += confusion_matrix(logits.argmax(1), labels, num_classes)  # argmax: [B, H, W]
            num_images += images.shape[0]
            if show and (i + 1) % _POSTFIX_EVERY == 0:
                bar.set_postfix(mIoU=f"{100 * iou_from_confusion(cm)[0]:.2f}")
        bar.close()
    if reduce and _distributed():
        counts = torch.tensor([num_images], dtype=torch.int64, device=device)
        dist.all_reduce(cm, op=dist.ReduceOp.SUM)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        num_images = int(counts.item())
    miou, per_class = iou_from_confusion(cm)
    return EvalResult(
        miou=miou,
        per_class_iou=[None if math.isnan(v) else v for v in per_class.tolist()],
        confusion=cm.cpu().tolist(),
        num_images=num_images,
    )


def evaluate_many(
    model: torch.nn.Module, specs: Sequence[str], build_loader: Callable[[str], Iterable], **kwargs
) -> dict[str, EvalResult]:
    """:func:`evaluate` on each dataset spec in turn; ``{spec: EvalResult}`` in the order given.

    ``build_loader(spec)`` is called just before each evaluation, so only one dataset (and its loader
    workers) is alive at a time. ``kwargs`` go to :func:`evaluate`; the progress bar is named by spec.
    """
    return {spec: evaluate(model, build_loader(spec), desc=spec, **kwargs) for spec in specs}
