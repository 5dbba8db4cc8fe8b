"""CMA — cross-modal alignment: image-text contrastive loss with momentum distillation.

Source: ALBEF (Li et al., NeurIPS 2021) §3.2-3.3, as used by TCL (Yang et al., CVPR 2022) §3.1.

    s_i2t = z_v · [ẑ_t; Q_t]ᵀ / τ          s_t2i = z_t · [ẑ_v; Q_v]ᵀ / τ
    target_i2t = α · softmax(ẑ_v · [ẑ_t; Q_t]ᵀ / τ) + (1 − α) · y      (symmetric for t2i)
    L_cma = ½ (CE(s_i2t, target_i2t) + CE(s_t2i, target_t2i))

y puts equal mass on every column with the row's image id (all captions of the image, in batch and
queue). Targets carry no gradient. α = 0 gives the CLIP/ALBEF baseline (`itc`).

With online columns (`objective.online_columns`) the in-batch columns of s are the online z_v, z_t
with gradient — CLIP's symmetric InfoNCE, each pair trained through both its row and its column —
while the distillation target keeps the momentum columns (`teacher_cols_*`).
"""

from __future__ import annotations

import torch

from train.objectives.common import positive_targets, soft_cross_entropy


def cma_loss(
    *,  # by name: twelve tensors of the same few shapes are too easy to pass in the wrong order
    image: torch.Tensor,  # z_v (B, d)
    text: torch.Tensor,  # z_t (B, d)
    image_m: torch.Tensor,  # ẑ_v of the same rows (B, d)
    text_m: torch.Tensor,  # ẑ_t of the same rows (B, d)
    cols_image: torch.Tensor,  # [ẑ_v; Q_v] (N, d)
    cols_text: torch.Tensor,  # [ẑ_t; Q_t] (N, d)
    row_ids: torch.Tensor,  # (B,)
    col_ids: torch.Tensor,  # (N,)
    tau: torch.Tensor,
    alpha: float,
    teacher_cols_image: torch.Tensor | None = None,  # (N, d) the teacher's columns, when not cols_image
    teacher_cols_text: torch.Tensor | None = None,  # (N, d)
) -> torch.Tensor:
    y = positive_targets(row_ids, col_ids, image.dtype)  # (B, N)
    s_i2t = image @ cols_text.T / tau  # (B, N)
    s_t2i = text @ cols_image.T / tau  # (B, N)
    with torch.no_grad():
        t = tau.detach()
        tc_image = cols_image if teacher_cols_image is None else teacher_cols_image
        tc_text = cols_text if teacher_cols_text is None else teacher_cols_text
        target_i2t = alpha * torch.softmax(image_m @ tc_text.T / t, dim=1) + (1 - alpha) * y
        target_t2i = alpha * torch.softmax(text_m @ tc_image.T / t, dim=1) + (1 - alpha) * y
    return 0.5 * (soft_cross_entropy(s_i2t, target_i2t) + soft_cross_entropy(s_t2i, target_t2i))
