"""Helpers several test modules share (a test module is not a library): a small training config
and what a run's metrics say."""

from __future__ import annotations

import json
from pathlib import Path

from train.config import TrainConfig, load_train_config

SMALL = [
    "data.shapes_train_images=48",
    "data.shapes_val_images=16",
    "data.workers=0",
    "data.vocab_size=200",
    "model.image.width=32",
    "model.image.depth=1",
    "model.image.image_size=32",
    "model.text.width=32",
    "model.text.depth=1",
    "model.text.intermediate=64",
    "model.embed_dim=16",
    "model.codebook_size=8",
    "model.queue_size=32",
    "optim.batch_size=8",
    "optim.max_steps=6",
    "optim.warmup_steps=2",
    "run.log_every_steps=1",
    "run.eval_every_steps=3",
    "run.progress=false",
]


def small(*extra: str) -> TrainConfig:
    return load_train_config("tiny-shapes", [*SMALL, *extra])


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["type"] == "train"}
