"""An exponential moving average of the trained weights, for evaluation and the shipped model.

With `optim.ema_decay = d > 0`, after every optimiser step each trained parameter's average moves
toward it: `avg ← avg + (1 − d_t)(p − avg)`, with `d_t = min(d, (1 + t) / (10 + t))` at step t
(timm's ModelEmaV2 warm-up, so early averages are not dominated by the initial weights). Only
parameters with `requires_grad` are averaged; frozen towers, buffers and the queue are the model's
own. Evaluation, and so `best.pt` and everything exported from it, use the average; `last.pt`
holds the raw weights and the average (key "ema") for exact resume.

    average = WeightAverage(model, decay=0.99)
    ...optimizer.step(); average.update(model, step)
    with average.applied(model):
        metrics = evaluate(model)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad
        }  # name -> average, same shape and dtype as the parameter

    def rate(self, step: int) -> float:
        """The decay used after optimiser step `step` (1-based)."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.rate(step)
        params = dict(model.named_parameters())
        for name, avg in self.shadow.items():
            avg.lerp_(params[name].detach(), 1.0 - d)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The averaged weights in `model` for the block; its own weights restored after it."""
        params = dict(model.named_parameters())
        saved = {name: params[name].detach().clone() for name in self.shadow}
        with torch.no_grad():
            for name, avg in self.shadow.items():
                params[name].copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    params[name].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            missing, extra = set(self.shadow) - set(state), set(state) - set(self.shadow)
            raise ValueError(f"ema state differs from the trained weights: missing {missing}, extra {extra}")
        for name, value in state.items():
            self.shadow[name].copy_(value)
