"""Gradients go where they should; τ stays clamped; EMA and queues behave as §3 states."""

from __future__ import annotations

import pytest
import torch

from tests.train.tiny import pad, tiny_batch, tiny_model
from train.config import ObjectiveConfig
from train.model.dual import DualEncoder
from train.model.queue import PairQueue
from train.objectives import AlignmentObjective, gather_targets


def run_step(model: DualEncoder, preset: str) -> torch.Tensor:
    b = tiny_batch()
    input_ids, mask = pad(b["tokens"])
    f = model(b["view1"], b["view2"], input_ids, mask, b["ids"])
    objective = AlignmentObjective(ObjectiveConfig(preset=preset), model.cfg.codebook_temp)
    out = objective(
        f, gather_targets(f), model.queue.contents(), model.temperature(), model.codebook.vectors(), 0.4
    )
    out.loss.backward()
    return out.loss


def test_no_gradient_into_momentum_copies_or_queues() -> None:
    model = tiny_model()
    queue_before = [b.clone() for b in model.queue.buffers()]
    momentum_before = [p.clone() for p in model.momentum.parameters()]
    run_step(model, "tessera")
    assert all(p.grad is None for p in model.momentum.parameters())
    assert all(not b.requires_grad for b in model.queue.buffers())
    assert all(torch.equal(a, b) for a, b in zip(queue_before, model.queue.buffers(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(momentum_before, model.momentum.parameters(), strict=True))
    online = dict(model.online.named_parameters())
    missing = [n for n, p in online.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"online parameters without gradient: {missing}"
    assert model.temp.grad is not None and model.temp.grad.abs() > 0


@pytest.mark.parametrize(("preset", "codebook_learns"), [("itc", False), ("tcl", False), ("codis", True)])
def test_codebook_learns_from_code_only(preset: str, codebook_learns: bool) -> None:
    model = tiny_model()
    run_step(model, preset)
    grad = model.codebook.weight.grad
    if codebook_learns:
        assert grad is not None and grad.abs().sum() > 0
    else:
        assert grad is None


def test_temperature_stays_clamped() -> None:
    model = tiny_model()
    optimiser = torch.optim.SGD([model.temp], lr=100.0)
    for push in (+1.0, -1.0):  # a huge step up, then down
        optimiser.zero_grad()
        (push * -model.temperature()).backward()
        optimiser.step()
        tau = model.temperature().item()
        assert model.cfg.temp_min <= tau <= model.cfg.temp_max
    assert model.temperature().item() == pytest.approx(model.cfg.temp_min)
    with torch.no_grad():
        model.temp.fill_(3.0)
    assert model.temperature().item() == pytest.approx(model.cfg.temp_max)


def test_momentum_update_is_the_ema() -> None:
    model = tiny_model()
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(torch.randn_like(p))
    online = [p.clone() for p in model.online.parameters()]
    before = [p.clone() for p in model.momentum.parameters()]
    codebook, temp = model.codebook.weight.clone(), model.temp.clone()
    model.update_momentum()
    m = model.cfg.momentum
    for o, b, a in zip(online, before, model.momentum.parameters(), strict=True):
        assert torch.allclose(a, m * b + (1 - m) * o, atol=1e-12)
    assert torch.equal(codebook, model.codebook.weight) and torch.equal(temp, model.temp)


def test_queue_is_a_ring_that_keeps_ids() -> None:
    q = PairQueue(size=6, dim=2)
    assert q.contents()[0].shape == (0, 2)
    for step in range(4):  # 4 batches of 3 into 6 slots: wraps twice
        x = torch.full((3, 2), float(step))
        q.enqueue(x, -x, torch.arange(3) + 10 * step)
    image, text, ids = q.contents()
    assert sorted(ids.tolist()) == [20, 21, 22, 30, 31, 32]
    assert torch.equal(text, -image) and set(image[:, 0].tolist()) == {2.0, 3.0}
    with pytest.raises(ValueError, match="multiple of the global batch 4"):
        q.enqueue(torch.zeros(4, 2), torch.zeros(4, 2), torch.arange(4))
