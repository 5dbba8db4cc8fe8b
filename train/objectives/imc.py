"""IMC — intra-modal contrastive loss.

Source: TCL (Yang et al., CVPR 2022) §3.2, Eq. 4-5.

    s_i2i = z_v(view 1) · [ẑ_v(view 2); Q_v]ᵀ / τ      s_t2t = z_t · [ẑ_t; Q_t]ᵀ / τ
    L_imc = ½ (CE(s_i2i, y) + CE(s_t2t, y))

The two text views differ by dropout and by the momentum weights. y is the positive target by
sample id (the other view of the same image, and of any pair of the same image).
"""

from __future__ import annotations

import torch

from train.objectives.common import positive_targets, soft_cross_entropy


def imc_loss(
    image: torch.Tensor,  # z_v (B, d), view 1
    text: torch.Tensor,  # z_t (B, d)
    cols_image: torch.Tensor,  # [ẑ_v(view 2); Q_v] (N, d)
    cols_text: torch.Tensor,  # [ẑ_t; Q_t] (N, d)
    row_ids: torch.Tensor,  # (B,)
    col_ids: torch.Tensor,  # (N,)
    tau: torch.Tensor,
) -> torch.Tensor:
    y = positive_targets(row_ids, col_ids, image.dtype)  # (B, N)
    loss_i2i = soft_cross_entropy(image @ cols_image.T / tau, y)
    loss_t2t = soft_cross_entropy(text @ cols_text.T / tau, y)
    return 0.5 * (loss_i2i + loss_t2t)
