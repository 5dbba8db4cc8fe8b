"""The codebook's k-means: spherical k-means finds separated clusters, returns a fixed point of
its own update (each centroid the normalised sum of its rows, each row at its most similar
centroid), and refuses fewer rows than centroids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.kmeans import spherical_kmeans


def clusters(k: int, per: int, d: int, spread: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows = np.concatenate([c + spread * rng.normal(size=(per, d)) for c in centres])
    return torch.from_numpy(rows), torch.from_numpy(centres)


def test_separated_clusters_are_found() -> None:
    x, centres = clusters(8, 30, 16, 0.05)
    found, fit = spherical_kmeans(x, 8)
    similarity = found.double() @ centres.T  # (8, 8)
    assert sorted(similarity.argmax(1).tolist()) == list(range(8))  # one centroid per cluster
    assert float(similarity.max(1).values.min()) > 0.99 and fit > 0.98


def test_the_result_is_a_fixed_point_of_the_update() -> None:
    x, _ = clusters(5, 40, 12, 0.6, seed=1)  # overlapping clusters: a real optimisation
    centroids, fit = spherical_kmeans(x, 7, iters=200, seed=3)
    unit = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)  # float64
    c = centroids.double().numpy()
    assign = np.argmax(unit @ c.T, axis=1)
    for j in range(7):  # an independent float64 loop over the rows of each cluster
        total = np.zeros(unit.shape[1])
        for row in unit[assign == j]:
            total += row
        assert np.abs(total / np.linalg.norm(total) - c[j]).max() < 1e-6
    assert abs(fit - float(np.mean(np.max(unit @ c.T, axis=1)))) < 1e-6
    assert np.allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-6)


def test_fewer_rows_than_centroids_are_refused() -> None:
    with pytest.raises(ValueError, match="k-means of 16 centroids needs at least 16 embeddings, got 10"):
        spherical_kmeans(torch.randn(10, 4), 16)
