"""The few collectives the objectives need, each a no-op in a single process.

The momentum targets are gathered without gradient: the online features stay on their rank and
their loss rows are averaged by DDP. The one exception is `all_gather_with_grad`, for CMA with
online columns (CLIP's symmetric InfoNCE, `objective.online_columns`): there each rank's online
features are also columns of every other rank's rows, and the gather's backward sums those
gradients back to their rank, so DDP's average equals one process on the whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside `torch.distributed`."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """`all_gather_cat` whose backward returns each rank the gradient of its own rows, summed over ranks."""
    _, world = rank_and_world()
    if world == 1:
        return x
    import torch.distributed.nn.functional as dist_fn  # autograd-aware collectives

    return torch.cat(dist_fn.all_gather(x.contiguous()), dim=0)


@torch.no_grad()
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenates equal-shaped tensors of every rank along dim 0, in rank order."""
    _, world = rank_and_world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_gather_padded(x: torch.Tensor, pad_value: float | bool = 0) -> torch.Tensor:
    """Like `all_gather_cat` for tensors whose dim 1 differs by rank (text length): pads to the max."""
    _, world = rank_and_world()
    if world == 1:
        return x
    length = torch.tensor([x.shape[1]], device=x.device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    pad = int(length) - x.shape[1]
    if pad:
        widths = [0, 0] * (x.dim() - 2) + [0, pad]
        x = F.pad(x, widths, value=pad_value) if x.dtype != torch.bool else F.pad(x, widths).bool()
    return all_gather_cat(x)


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a new tensor; the input is left alone)."""
    _, world = rank_and_world()
    if world == 1:
        return x
    out = x.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@torch.no_grad()
def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Max over ranks (a new tensor)."""
    _, world = rank_and_world()
    if world == 1:
        return x
    out = x.clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out
