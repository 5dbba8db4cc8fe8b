"""The staged tower interface every tower implements, and locking a prefix of stages.

A tower is `embed` -> `run_stages(0, n)` -> `finish`, where `finish` returns
(pooled (B, W), locals (B, N, W), locals mask (B, N)). Splitting it lets training lock (freeze) the
first k stages of a pretrained tower, compute that prefix once (optionally cached on disk), and
train only the rest: the CPU-friendly middle ground between locked towers and full fine-tuning.

`stage_groups()` returns [embed, stage 1, ..., stage n, finish]; locking k stages freezes the
embed group and stages 1..k, and the finish group too when k = n (the whole tower).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class Tower(Protocol):
    width: int

    @property
    def num_stages(self) -> int: ...

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def run_stages(
        self, h: torch.Tensor, start: int, stop: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def finish(
        self, h: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def stage_groups(self) -> list[list[nn.Module | nn.Parameter]]: ...


def resolve_locked(tower: Tower, stages: int) -> int:
    """Stages to lock, counted from the input: k in [0, num_stages]; or from the end, as Python
    indexes: -1 the whole tower, -2 all but its last stage, -3 all but its last two (a config that
    fine-tunes the top of towers whose depth it does not know: a CLIP checkpoint's)."""
    n = tower.num_stages
    locked = n + 1 + stages if stages < 0 else stages
    if not 0 <= locked <= n:
        raise ValueError(
            f"cannot lock {stages} stages of a tower with {n} (0 to {n}; or -1 all, -2 all but the last, …)"
        )
    return locked


def locked_parts(tower: Tower, stages: int) -> tuple[list[nn.Module], list[nn.Parameter]]:
    """(modules, loose parameters) frozen when the first `stages` stages are locked."""
    groups = tower.stage_groups()
    n = tower.num_stages
    chosen = groups[: stages + 1] if stages > 0 else []
    if stages == n:
        chosen = groups
    modules = [m for g in chosen for m in g if isinstance(m, nn.Module)]
    params = [p for g in chosen for p in g if isinstance(p, nn.Parameter)]
    return modules, params


def freeze(tower: Tower, stages: int) -> list[nn.Module]:
    """Switches off gradients of the locked parts; returns the modules to keep in eval mode."""
    modules, params = locked_parts(tower, stages)
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
    for p in params:
        p.requires_grad_(False)
    return modules
