"""DeepLabv3+ head with the parameter names of official FAMix checkpoints (``classifier.*``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ASPP rates per output stride; 14 (ViT-L/14, output stride = patch size) takes stride 16's.
ASPP_RATES = {8: (12, 24, 36), 14: (6, 12, 18), 16: (6, 12, 18), 32: (6, 12, 18)}


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = 0 if kernel == 1 else dilation
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average pool, 1x1 conv + BN + ReLU, upsampled back."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return F.interpolate(super().forward(x), size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Five 256-channel branches (1x1, three dilated 3x3, image pooling), concatenated and projected."""

    def __init__(self, cin: int, rates: tuple[int, int, int], cout: int = 256):
        super().__init__()
        self.convs = nn.ModuleList(
            [_conv_bn_relu(cin, cout)]
            + [_conv_bn_relu(cin, cout, 3, r) for r in rates]
            + [ASPPPooling(cin, cout)]
        )
        self.project = nn.Sequential(
            nn.Conv2d(5 * cout, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabHeadV3Plus(nn.Module):
    """DeepLabv3+ decoder: ASPP on the deep feature, fused with a 48-channel projection of the low one."""

    def __init__(self, low_channels: int, out_channels: int, num_classes: int, output_stride: int = 16):
        super().__init__()
        if output_stride not in ASPP_RATES:
            raise ValueError(f"output_stride must be one of {sorted(ASPP_RATES)}, got {output_stride}")
        self.project = _conv_bn_relu(low_channels, 48)
        self.aspp = ASPP(out_channels, ASPP_RATES[output_stride])
        self.classifier = nn.Sequential(
            nn.Conv2d(304, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, low: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """low: [B, C_low, H/4, W/4], out: [B, C_out, H/OS, W/OS] -> logits [B, K, H/4, W/4]."""
        low = self.project(low)
        deep = F.interpolate(self.aspp(out), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([low, deep], dim=1))
