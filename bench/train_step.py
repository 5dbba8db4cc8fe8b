"""Benchmark: forward + backward time of one training step on this machine's CPU.

A step here is what the loop will run: online towers on view 1 and the text, momentum towers on
view 2 and the text, the combined objective (queue full), backward; and, separately timed, the
AdamW update plus the EMA of the momentum twin. Medians over `--steps` after one warm-up step.

    python -m bench.train_step [--batch 32] [--steps 5] [--preset tessera] [--record]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import torch

from bench.common import machine, median, publish
from train.config import ImageTowerConfig, ModelConfig, ObjectiveConfig, TextTowerConfig
from train.model import DualEncoder
from train.objectives import AlignmentObjective, gather_targets

SETUPS: dict[str, ModelConfig] = {
    # the from-scratch tiny model of the shapes demo: ViT 64 px / patch 8, BERT 128 x 2
    "tiny (ViT-64/8 + BERT-128x2)": ModelConfig(
        image=ImageTowerConfig(kind="vit", image_size=64, patch_size=8, width=128, depth=2, heads=4),
        text=TextTowerConfig(width=128, depth=2, heads=4, intermediate=512, max_len=32),
        codebook_size=256,
        queue_size=1024,
    ),
    # the edge pair: pretrained EfficientNet-lite0 (224 px) + all-MiniLM-L6-v2
    "EfficientNet-lite0 + MiniLM-L6": ModelConfig(
        image=ImageTowerConfig(kind="efficientnet_lite0", image_size=224, pretrained="package"),
        text=TextTowerConfig(pretrained="minilm-l6", max_len=32),
        codebook_size=1024,
        queue_size=4096,
    ),
}


@dataclass
class Timing:
    name: str
    params_m: float
    fwd_bwd_s: float
    update_s: float


def time_setup(name: str, cfg: ModelConfig, batch: int, steps: int, preset: str) -> Timing:
    torch.manual_seed(0)
    model = DualEncoder(cfg).train()
    objective = AlignmentObjective(ObjectiveConfig(preset=preset), cfg.codebook_temp)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    with torch.no_grad():  # a full queue: the loss sees M + B columns as in steady state
        for _ in range(cfg.queue_size // batch):
            feats = torch.nn.functional.normalize(torch.randn(2, batch, cfg.embed_dim), dim=-1)
            model.queue.enqueue(feats[0], feats[1], torch.randint(0, 10**6, (batch,)))
    size = cfg.image.image_size
    lengths = torch.randint(12, 24, (batch,))
    input_ids = torch.randint(1000, 20000, (batch, int(lengths.max())))
    mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()
    ids = torch.arange(batch)
    fwd_bwd, update = [], []
    for _ in range(steps + 1):
        views = torch.rand(2, batch, 3, size, size)
        t0 = time.perf_counter()
        f = model(views[0], views[1], input_ids, mask, ids)
        out = objective(
            f, gather_targets(f), model.queue.contents(), model.temperature(), model.codebook.vectors(), 0.4
        )
        out.loss.backward()
        t1 = time.perf_counter()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        model.update_momentum()
        t2 = time.perf_counter()
        fwd_bwd.append(t1 - t0)
        update.append(t2 - t1)
    params = sum(p.numel() for p in model.online.parameters()) / 1e6
    return Timing(name, params, median(fwd_bwd[1:]), median(update[1:]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--preset", default="tessera", choices=["itc", "tcl", "codis", "tessera"])
    parser.add_argument("--record", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    rows = [time_setup(n, c, args.batch, args.steps, args.preset) for n, c in SETUPS.items()]
    lines = [
        f"- Command: `python -m bench.train_step {' '.join(sys.argv[1:])}`",
        f"- Machine: {machine()}, torch threads {torch.get_num_threads()}",
        f"- Batch {args.batch}, preset `{args.preset}`, queue full; "
        f"median of {args.steps} steps after 1 warm-up.",
        "",
        "| model | online params (M) | fwd+bwd per step (s) | AdamW + EMA (s) | samples/s (fwd+bwd) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        rate = args.batch / r.fwd_bwd_s
        lines.append(f"| {r.name} | {r.params_m:.1f} | {r.fwd_bwd_s:.3f} | {r.update_s:.3f} | {rate:.1f} |")
    publish("train_step", lines, args.record)


if __name__ == "__main__":
    main()
