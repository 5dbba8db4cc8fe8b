"""CODE — representation codebook with optimal-transport teacher assignments (CODIS).

Source: CODIS, "Multi-modal Alignment using Representation Codebook" (Duan et al., CVPR 2022) §3:
a learnable codebook C (K x d, rows L2-normalised) shared by both modalities; the momentum
teacher's features are assigned to codes by optimal transport (Sinkhorn-Knopp, as SwAV, Caron et
al. 2020) and guide the online student of the other modality. The paper has no public code: K,
ε, τ_c and the weighting below are ours (docs/decisions.md) and travel in checkpoints and bundles.

    p_x = softmax(z_x · Cᵀ / τ_c)                     (student, gradient into z_x and C)
    q̂_x = Sinkhorn(ẑ_x · Cᵀ, ε, iters)               (teacher, no gradient)
    L_code = ¼ (H(q̂_v, p_t) + H(q̂_t, p_v) + H(q̂_v, p_v) + H(q̂_t, p_t)),   H(q, p) = −Σ q log p

q̂_v comes from the second image view, p_v from the first.
"""

from __future__ import annotations

import torch

from train.distributed import all_reduce_max, all_reduce_sum, rank_and_world


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float, n_iters: int) -> torch.Tensor:
    """Entropic OT assignment of B samples (rows) to K codes with uniform marginals.

    scores (B, K) of this rank's samples; the marginals are over the global batch (all ranks).
    Each iteration scales codes to total mass 1/K, then samples to 1/B; the result is scaled so
    every row (sample) sums to exactly 1 — the last normalisation — and every code's column
    approaches total mass B/K as iterations grow.
    """
    _, world = rank_and_world()
    batch_global = scores.shape[0] * world
    k = scores.shape[1]
    peak = all_reduce_max(scores.max())  # a global constant: cancels in every normalisation
    q = torch.exp((scores - peak) / eps).T  # (K, B)
    q = q / all_reduce_sum(q.sum())
    for _ in range(n_iters):
        q = q / all_reduce_sum(q.sum(dim=1, keepdim=True)) / k  # codes: mass 1/K each
        q = q / q.sum(dim=0, keepdim=True) / batch_global  # samples: mass 1/B each
    return (q * batch_global).T  # (B, K), rows sum to 1


def cross_entropy_to(q: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """H(q, softmax(logits)) averaged over rows."""
    return -(q * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def code_loss(
    image: torch.Tensor,  # z_v (B, d), view 1
    text: torch.Tensor,  # z_t (B, d)
    image_m: torch.Tensor,  # ẑ_v (B, d), view 2
    text_m: torch.Tensor,  # ẑ_t (B, d)
    codebook: torch.Tensor,  # C (K, d), rows L2-normalised
    codebook_temp: float,
    eps: float,
    n_iters: int,
) -> torch.Tensor:
    frozen = codebook.detach()
    q_image = sinkhorn(image_m @ frozen.T, eps, n_iters)  # (B, K)
    q_text = sinkhorn(text_m @ frozen.T, eps, n_iters)  # (B, K)
    logits_image = image @ codebook.T / codebook_temp  # (B, K)
    logits_text = text @ codebook.T / codebook_temp  # (B, K)
    cross = cross_entropy_to(q_image, logits_text) + cross_entropy_to(q_text, logits_image)
    same = cross_entropy_to(q_image, logits_image) + cross_entropy_to(q_text, logits_text)
    return 0.25 * (cross + same)
