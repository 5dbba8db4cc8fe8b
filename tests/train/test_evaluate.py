"""Retrieval recall against a plain loop implementation of the multi-caption protocol."""

from __future__ import annotations

import torch

from train.evaluate import recall_at_k, zero_shot_accuracy


def loop_recalls(sim: list[list[float]], owner: list[int]) -> dict[str, float]:
    n_img, n_cap = len(sim), len(sim[0])
    out = {}
    for k in (1, 5, 10):
        hits = 0
        for i in range(n_img):
            top = sorted(range(n_cap), key=lambda j: -sim[i][j])[:k]
            hits += any(owner[j] == i for j in top)
        out[f"i2t_r{k}"] = 100.0 * hits / n_img
    for k in (1, 5, 10):
        hits = 0
        for j in range(n_cap):
            top = sorted(range(n_img), key=lambda i: -sim[i][j])[:k]
            hits += owner[j] in top
        out[f"t2i_r{k}"] = 100.0 * hits / n_cap
    out["rsum"] = sum(out.values())
    return out


def test_recall_matches_loops() -> None:
    gen = torch.Generator().manual_seed(0)
    n_img = 30
    owner = torch.arange(n_img).repeat_interleave(3)[:80]  # up to 3 captions per image, some with fewer
    img = torch.randn(n_img, 8, generator=gen)
    cap = img[owner] + 1.5 * torch.randn(len(owner), 8, generator=gen)  # noisy: partial recall
    sim = img @ cap.T
    got = recall_at_k(sim, owner)
    want = loop_recalls(sim.tolist(), owner.tolist())
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-4, key
    assert 0 < got["t2i_r1"] < 100


def test_zero_shot_accuracy() -> None:
    classes = torch.eye(3)
    images = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.6, 0.7, 0.0]])
    assert abs(zero_shot_accuracy(images, torch.tensor([0, 2, 0]), classes) - 200 / 3) < 1e-4
