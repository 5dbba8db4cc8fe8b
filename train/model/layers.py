"""Small layers shared by the towers and heads.

- `RegionPool`: adaptive average pooling of a fixed (side x side) grid to (regions x regions), as a
  constant matrix product, so it is exact, differentiable and exports to ONNX for any sizes
  (ONNX has no adaptive pooling for non-divisible sides).
- `l2_normalize`: the one normalisation used for every embedding in the joint space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def region_pool_matrix(in_side: int, out_side: int) -> torch.Tensor:
    """(out_side², in_side²) weights equal to `F.adaptive_avg_pool2d`'s bins."""
    axis = torch.zeros(out_side, in_side)
    for o in range(out_side):
        start = (o * in_side) // out_side
        end = -((-(o + 1) * in_side) // out_side)  # ceil
        axis[o, start:end] = 1.0 / (end - start)
    return torch.kron(axis, axis)  # rows: (oy, ox) row-major; cols: (iy, ix)


class RegionPool(nn.Module):
    """(B, in_side², C) tokens in row-major grid order -> (B, out_side², C) region features."""

    def __init__(self, in_side: int, out_side: int) -> None:
        super().__init__()
        self.register_buffer("weight", region_pool_matrix(in_side, out_side), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.weight.to(tokens.dtype), tokens)  # (B, R, C)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Unit L2 norm along the last axis."""
    return F.normalize(x, dim=-1, eps=1e-12)
