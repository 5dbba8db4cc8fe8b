"""Pieces every contrastive term shares: positive targets by sample id and soft cross-entropy."""

from __future__ import annotations

import torch


def positive_targets(row_ids: torch.Tensor, col_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """y: equal mass on every column whose id equals the row's id (B, N); rows sum to 1."""
    pos = (row_ids[:, None] == col_ids[None, :]).to(dtype)  # (B, N)
    return pos / pos.sum(dim=1, keepdim=True).clamp_min(1.0)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over rows of −Σ_j target_ij · log softmax(logits)_ij."""
    return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Losses are computed in float32 at least (autocast hands half precision in)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
