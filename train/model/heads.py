"""Projection heads to the joint space and the representation codebook (CODIS).

- `ProjectionHead`: tower width -> d, the same head for global and local features (docs/architecture.md §2),
  followed by L2 normalisation.
- `Codebook`: K learnable code vectors; `vectors()` returns them L2-normalised (rows), the form
  every consumer (losses, code scores, the bundle's codebook.npy) uses.
"""

from __future__ import annotations

import torch
from torch import nn

from train.model.layers import l2_normalize


class ProjectionHead(nn.Module):
    def __init__(self, width: int, dim: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(width, dim, bias=bias)  # CLIP's projections have no bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.proj(self.dropout(x)))  # (..., d)


class Codebook(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(l2_normalize(torch.randn(size, dim)))  # (K, d)

    def vectors(self) -> torch.Tensor:
        return l2_normalize(self.weight)  # (K, d)
