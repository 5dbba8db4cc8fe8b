"""A codebook fitted to a model's embeddings: how an imported (or any) model gets one without
training it (`model.codebook_init = "kmeans"`; docs/architecture.md §2).

- `spherical_kmeans(x, k, iters, seed)`: unit-norm centroids maximising the summed cosine of each
  row to its centroid (Dhillon & Modha 2001), k-means++ seeding on cosine distance; an emptied
  cluster is re-seeded at the row its centroid fits worst.
- `fit_codebook(model, source, text, cfg, device)`: embeds up to `cfg.codebook_kmeans_items`
  training images and their captions with both towers (eval mode, as evaluation and serving do),
  fits K centroids to the two sets together and writes them into the model's codebook. Returns
  what the checkpoint and the bundle's manifest record of it.
"""

from __future__ import annotations

from typing import Any

import torch

from train.config import ModelConfig
from train.data.datasets import PairSource
from train.data.tokenizer import TextEncoder
from train.evaluate import RetrievalEvaluator
from train.model import DualEncoder
from train.model.layers import l2_normalize


def _seeds(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ on cosine distance: each next seed drawn in proportion to its distance² to the
    nearest seed so far. x (N, d) unit rows -> (k, d)."""
    n = x.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    nearest = 1.0 - x @ x[chosen[0]]  # (N,) cosine distance to the nearest seed
    for _ in range(1, k):
        weights = nearest.clamp_min(0).square()
        if float(weights.sum()) <= 0:  # fewer distinct rows than k: any unchosen row
            weights = torch.ones(n, dtype=x.dtype)
            weights[chosen] = 0
        pick = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(pick)
        nearest = torch.minimum(nearest, 1.0 - x @ x[pick])
    return x[chosen].clone()


def spherical_kmeans(x: torch.Tensor, k: int, iters: int = 30, seed: int = 0) -> tuple[torch.Tensor, float]:
    """x (N, d) -> (centroids (k, d) unit rows, mean cosine of a row to its centroid)."""
    if x.shape[0] < k:
        raise ValueError(f"k-means of {k} centroids needs at least {k} embeddings, got {x.shape[0]}")
    x = l2_normalize(x.double())  # (N, d): float64, so the fit does not depend on summation order
    generator = torch.Generator().manual_seed(seed)
    centroids = _seeds(x, k, generator)  # (k, d)
    assign = torch.full((x.shape[0],), -1, dtype=torch.long)
    for _ in range(iters):
        similarity = x @ centroids.T  # (N, k)
        best, new_assign = similarity.max(dim=1)  # (N,)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)  # (k, d)
        counts = torch.bincount(assign, minlength=k)  # (k,)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            worst = int(best.argmin())  # the row its centroid fits worst seeds the empty cluster
            sums[empty], best[worst] = x[worst], 1.0
        centroids = l2_normalize(sums)
    fit = float((x @ centroids.T).max(dim=1).values.mean())
    return centroids.float(), fit


@torch.no_grad()
def fit_codebook(
    model: DualEncoder,
    source: PairSource,
    text: TextEncoder,
    cfg: ModelConfig,
    device: torch.device,
    seed: int,
) -> dict[str, Any]:
    """The codebook set to spherical k-means centroids of the model's image and caption embeddings
    of (at most `cfg.codebook_kmeans_items` images of) the training split; returns its record."""
    rset = source.retrieval_set(cfg.codebook_kmeans_items)
    _, embeddings = RetrievalEvaluator(rset, source.loader, text, device)(model)
    x = torch.cat([embeddings.images, embeddings.captions])  # (I + C, d)
    centroids, fit = spherical_kmeans(x, cfg.codebook_size, seed=seed)  # (K, d)
    model.codebook.weight.copy_(centroids.to(model.codebook.weight))
    return {
        "init": "kmeans",
        "images": len(rset.images),
        "captions": len(rset.captions),
        "k": cfg.codebook_size,
        "mean_cosine_to_centroid": round(fit, 6),
        "seed": seed,
    }
