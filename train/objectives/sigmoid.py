"""The sigmoid cross-modal loss of SigLIP (Zhai et al., ICCV 2023, Algorithm 1).

    logits = t · z_t · [z_v]ᵀ + b        (B, G): this rank's texts against the gathered images
    L = −(1/B) Σ_ij log σ(y_ij · logits_ij),   y_ij = +1 where text i and image j share an image id, else −1

Every pair is an independent binary decision, so no row is normalised over the batch; t = 1/τ is
the model's temperature and b its learnable bias (`model.logit_bias`, −10 at the paper's start).
Rows are local and columns the gathered online batch with gradient: across ranks each pair is
counted once and the step equals one process on the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_loss(
    text: torch.Tensor,  # z_t (B, d), this rank's rows
    cols_image: torch.Tensor,  # z_v of the gathered batch (G, d), with gradient
    row_ids: torch.Tensor,  # (B,) image ids of the texts
    col_ids: torch.Tensor,  # (G,)
    tau: torch.Tensor,
    bias: torch.Tensor,
) -> torch.Tensor:
    logits = text @ cols_image.T / tau + bias  # (B, G)
    signs = 2.0 * (row_ids[:, None] == col_ids[None, :]).to(logits.dtype) - 1.0  # (B, G), ±1
    return -F.logsigmoid(signs * logits).sum() / text.shape[0]
