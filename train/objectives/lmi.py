"""LMI — local mutual-information maximisation between a global embedding and its own locals.

Source: TCL (Yang et al., CVPR 2022) §3.3, Eq. 6-7 (Deep InfoMax style, InfoNCE bound).

For sample i and each valid local j of i (momentum locals l, no gradient):

    p_ij = exp(g_i·l_ij/τ) / (exp(g_i·l_ij/τ) + Σ_{k≠i, m valid} exp(g_i·l_km/τ))
    L = mean_i [ mean_{j valid} −log p_ij ]

g_i is the online global embedding. Negatives are the locals of every other sample of the global
batch (gathered over ranks: docs/decisions.md). Image (16 regions) and text (tokens, padding
masked) terms are averaged: L_lmi = ½ (L_image + L_text).
"""

from __future__ import annotations

import torch


def local_infonce(
    glob: torch.Tensor,  # g (B, d), online rows of this rank
    locals_: torch.Tensor,  # l (G, N, d), momentum locals of the global batch
    mask: torch.Tensor,  # (G, N) bool, valid locals
    row_index: torch.Tensor,  # (B,) position of each row in the global batch
    tau: torch.Tensor,
) -> torch.Tensor:
    b = glob.shape[0]
    rows = torch.arange(b, device=glob.device)
    s = torch.einsum("bd,gnd->bgn", glob, locals_) / tau  # (B, G, N)
    s = s.masked_fill(~mask[None], float("-inf"))  # (B, G, N)
    own = s[rows, row_index]  # (B, N) positive scores
    negatives = s.clone()
    negatives[rows, row_index] = float("-inf")
    neg_lse = torch.logsumexp(negatives.flatten(1), dim=1)  # (B,)
    log_p = own - torch.logaddexp(own, neg_lse[:, None])  # (B, N)
    own_mask = mask[row_index]  # (B, N)
    per_local = torch.where(own_mask, -log_p, torch.zeros_like(log_p))  # (B, N)
    per_sample = per_local.sum(1) / own_mask.sum(1).clamp_min(1)  # (B,)
    return per_sample.mean()


def lmi_loss(
    image: torch.Tensor,  # z_v (B, d)
    text: torch.Tensor,  # z_t (B, d)
    image_locals: torch.Tensor,  # (G, Nv, d)
    image_mask: torch.Tensor,  # (G, Nv)
    text_locals: torch.Tensor,  # (G, Nt, d)
    text_mask: torch.Tensor,  # (G, Nt)
    row_index: torch.Tensor,  # (B,)
    tau: torch.Tensor,
) -> torch.Tensor:
    loss_image = local_infonce(image, image_locals, image_mask, row_index, tau)
    loss_text = local_infonce(text, text_locals, text_mask, row_index, tau)
    return 0.5 * (loss_image + loss_text)
