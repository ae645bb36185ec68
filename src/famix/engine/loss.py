"""The training loss: pixel-wise cross-entropy with label smoothing, ignore pixels skipped."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from famix.data.trainids import IGNORE_INDEX


class SegmentationLoss(nn.Module):
    """Cross-entropy of logits [B, K, H, W] (computed in fp32, also under autocast) against trainIds
    [B, H, W], averaged over the pixels whose label is not ``ignore_index``; label smoothing as the paper's
    training recipe (0.1)."""

    def __init__(self, label_smoothing: float = 0.1, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.label_smoothing, self.ignore_index = label_smoothing, ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), labels, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing
        )
