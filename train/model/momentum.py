"""Momentum (EMA) copies (MoCo, ALBEF): a frozen twin of the online towers and heads whose weights
follow the online ones as θ̂ ← m·θ̂ + (1 − m)·θ after every optimiser step.

Floating buffers (BatchNorm statistics) follow the same average; integer buffers are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def momentum_copy(online: nn.Module) -> nn.Module:
    """A deep copy with gradients switched off."""
    twin = copy.deepcopy(online)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update(twin: nn.Module, online: nn.Module, momentum: float) -> None:
    """twin ← momentum·twin + (1 − momentum)·online, parameter by parameter."""
    for t, o in zip(twin.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
    for t, o in zip(twin.buffers(), online.buffers(), strict=True):
        if t.is_floating_point():
            t.mul_(momentum).add_(o, alpha=1.0 - momentum)
        else:
            t.copy_(o)
