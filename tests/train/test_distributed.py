"""Distributed: 2 gloo processes on CPU give the loss and (DDP-averaged) gradients of one process
on the concatenated batch, and identical queues — the way open_clip tests its gathered loss; with
CMA's online columns too, whose gather carries gradient back to the rank that owns each column."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from tests.train.tiny import pad, tiny_batch, tiny_model
from train.config import ObjectiveConfig
from train.model import DualEncoder
from train.objectives import AlignmentObjective, gather_targets

pytestmark = pytest.mark.integration  # starts processes, trains or exports (tests/conftest.py)

WORLD = 2
ALPHA = 0.4


def step(
    model: DualEncoder, forward, batch: dict, rows: slice, online: bool = False
) -> tuple[torch.Tensor, object]:
    """One objective evaluation on `rows` of the batch (text padded to those rows' longest)."""
    input_ids, mask = pad(batch["tokens"][rows])
    f = forward(batch["view1"][rows], batch["view2"][rows], input_ids, mask, batch["ids"][rows])
    t = gather_targets(f)
    objective = AlignmentObjective(
        ObjectiveConfig(preset="tessera", online_columns=online), model.cfg.codebook_temp
    )
    out = objective(f, t, model.queue.contents(), model.temperature(), model.codebook.vectors(), ALPHA)
    return out.loss, t


def worker(rank: int, init_file: str, out_dir: str, online: bool) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = tiny_model()
        ddp = DistributedDataParallel(model)
        batch = tiny_batch()
        per_rank = len(batch["ids"]) // WORLD
        loss, t = step(model, ddp, batch, slice(rank * per_rank, (rank + 1) * per_rank), online)
        loss.backward()  # DDP averages the gradients over ranks
        total = loss.detach().clone()
        dist.all_reduce(total)
        model.queue.enqueue(t.image_m, t.text_m, t.ids)
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        torch.save(
            {"loss": total / WORLD, "grads": grads, "queue": model.queue.state_dict()},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("online", [False, True], ids=["momentum-columns", "online-columns"])
def test_two_gloo_ranks_equal_one_process_on_the_concatenated_batch(tmp_path: Path, online: bool) -> None:
    mp.start_processes(
        worker, args=(str(tmp_path / "init"), str(tmp_path), online), nprocs=WORLD, start_method="spawn"
    )

    model = tiny_model()
    batch = tiny_batch()
    loss, t = step(model, model, batch, slice(None), online)
    loss.backward()
    model.queue.enqueue(t.image_m, t.text_m, t.ids)
    want_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert abs(got["loss"].item() - loss.item()) < 1e-5
        assert set(got["grads"]) == set(want_grads)
        worst = max((got["grads"][n] - g).abs().max().item() for n, g in want_grads.items())
        assert worst < 1e-5, f"rank {rank}: gradients differ by {worst}"
        for name, value in model.queue.state_dict().items():
            assert torch.allclose(got["queue"][name].to(value.dtype), value, atol=1e-12), name
    # The check is not vacuous: the batch's halves alone give a different loss.
    half_loss, _ = step(tiny_model(), tiny_model(), batch, slice(0, 4), online)
    assert abs(half_loss.item() - loss.item()) > 1e-3
