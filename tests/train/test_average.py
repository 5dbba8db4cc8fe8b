"""The weight average (train/average.py): equal to a float64 loop over the steps, applied only
inside its block, resumed exactly, and what `best.pt` ships."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import losses, small
from train.average import WeightAverage
from train.loop import train

pytestmark = pytest.mark.integration  # starts processes, trains or exports (tests/conftest.py)


def test_average_equals_a_float64_loop() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)  # frozen: not averaged
    average = WeightAverage(model, decay=0.9)
    trajectory = [{k: v.detach().double().clone() for k, v in model.named_parameters()}]
    for step in range(1, 31):
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p))
        trajectory.append({k: v.detach().double().clone() for k, v in model.named_parameters()})
        average.update(model, step)
    assert set(average.shadow) == {"0.weight", "2.weight", "2.bias"}
    for name, got in average.shadow.items():
        want = trajectory[0][name]
        for step in range(1, 31):
            d = min(0.9, (1 + step) / (10 + step))
            want = d * want + (1 - d) * trajectory[step][name]
        assert torch.allclose(got.double(), want, atol=1e-5), name

    raw = {k: v.detach().clone() for k, v in model.named_parameters()}
    with average.applied(model):
        assert torch.equal(model[2].weight, average.shadow["2.weight"])
        assert torch.equal(model[0].bias, raw["0.bias"])
    assert all(torch.equal(v, raw[k]) for k, v in model.named_parameters())  # restored


def test_best_checkpoint_ships_the_average_and_resume_is_exact(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    train(small("optim.ema_decay=0.5"), straight)
    last = torch.load(straight / "last.pt", weights_only=True)
    best = torch.load(straight / "best.pt", weights_only=True)
    assert "online.image_head.proj.weight" in last["ema"]
    for name, avg in best["ema"].items():  # best.pt: the weights evaluated are the average
        assert torch.equal(best["model"][name], avg), name
    assert any(not torch.equal(last["model"][n], a) for n, a in last["ema"].items())  # last: the raw

    resumed = tmp_path / "resumed"
    train(small("optim.ema_decay=0.5", "run.stop_after_steps=4"), resumed)
    train(small("optim.ema_decay=0.5"), resumed, resume=resumed / "last.pt")
    want, got = losses(straight), losses(resumed)
    assert all(abs(got[s] - want[s]) < 1e-6 for s in range(1, 7))
    again = torch.load(resumed / "last.pt", weights_only=True)
    for name, avg in last["ema"].items():
        assert torch.allclose(again["ema"][name].float(), avg.float(), atol=1e-6), name
