"""A tiny, deterministic dual encoder and batch for objective-level tests (float64, no dropout)."""

from __future__ import annotations

import torch

from train.config import ImageTowerConfig, ModelConfig, TextTowerConfig
from train.model import DualEncoder

TINY = ModelConfig(
    image=ImageTowerConfig(image_size=32, patch_size=8, width=32, depth=1, heads=4),
    text=TextTowerConfig(vocab_size=64, width=32, depth=1, heads=4, intermediate=64, dropout=0.0),
    embed_dim=16,
    codebook_size=8,
    queue_size=16,
)


def tiny_model(seed: int = 0) -> DualEncoder:
    """The tiny model in float64, its queue pre-filled with one deterministic batch of 8."""
    torch.manual_seed(seed)
    model = DualEncoder(TINY).double()
    gen = torch.Generator().manual_seed(seed + 100)
    feats = torch.nn.functional.normalize(torch.randn(2, 8, 16, generator=gen, dtype=torch.float64), dim=-1)
    model.queue.enqueue(feats[0], feats[1], torch.tensor([0, 1, 20, 21, 22, 23, 24, 25]))
    return model


def tiny_batch(n: int = 8, seed: int = 1) -> dict:
    """n pairs: two image views, token lists of varied length, image ids with repeats."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [3 + (i * 5) % 7 for i in range(n)]
    tokens = [[1, *torch.randint(3, 64, (k - 2,), generator=gen).tolist(), 2] for k in lengths]
    ids = torch.tensor([i // 2 if i < 4 else i for i in range(n)])  # 0,0,1,1,4,5,...; 1 spans ranks
    ids[4] = 1
    return {
        "view1": torch.rand(n, 3, 32, 32, generator=gen, dtype=torch.float64),
        "view2": torch.rand(n, 3, 32, 32, generator=gen, dtype=torch.float64),
        "tokens": tokens,
        "ids": ids,
    }


def pad(tokens: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads to the longest sequence in the list: (input_ids, attention_mask)."""
    width = max(len(t) for t in tokens)
    ids = torch.tensor([t + [0] * (width - len(t)) for t in tokens])
    return ids, (ids != 0).long()
