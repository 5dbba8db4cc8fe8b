"""What one training step hands the objectives, and the momentum targets gathered over ranks.

`StepFeatures` holds this rank's rows: online embeddings z_v (image view 1), z_t, and the momentum
embeddings ẑ_v (image view 2), ẑ_t with their momentum local features. `gather_targets` collects
the momentum side over all ranks once per step; the losses and the queue update both use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from train.distributed import all_gather_cat, all_gather_padded, rank_and_world


@dataclass
class StepFeatures:
    image: torch.Tensor  # z_v (B, d), online, view 1, L2-normalised
    text: torch.Tensor  # z_t (B, d), online
    image_m: torch.Tensor  # ẑ_v (B, d), momentum, view 2
    text_m: torch.Tensor  # ẑ_t (B, d), momentum
    image_locals_m: torch.Tensor | None  # (B, Nv, d), momentum image regions, view 2 (None: not needed)
    image_locals_mask: torch.Tensor | None  # (B, Nv) bool
    text_locals_m: torch.Tensor | None  # (B, Nt, d), momentum token states except [CLS]
    text_locals_mask: torch.Tensor | None  # (B, Nt) bool, False on padding
    ids: torch.Tensor  # (B,) image id of each pair: equal ids are positives


@dataclass
class GatheredTargets:
    image_m: torch.Tensor  # (G, d) over the global batch, rank order
    text_m: torch.Tensor  # (G, d)
    image_locals_m: torch.Tensor | None  # (G, Nv, d); None when the step computed no locals
    image_locals_mask: torch.Tensor | None  # (G, Nv)
    text_locals_m: torch.Tensor | None  # (G, Nt', d), padded to the longest rank
    text_locals_mask: torch.Tensor | None  # (G, Nt')
    ids: torch.Tensor  # (G,)
    row_offset: int  # index of this rank's first row in the global batch


def gather_targets(f: StepFeatures) -> GatheredTargets:
    """All-gathers the (detached) momentum side of `f` over ranks; identity in one process."""
    rank, _ = rank_and_world()
    with_locals = f.image_locals_m is not None
    assert with_locals == (f.text_locals_m is not None), "image and text locals come together"
    return GatheredTargets(
        image_m=all_gather_cat(f.image_m.detach()),
        text_m=all_gather_cat(f.text_m.detach()),
        image_locals_m=all_gather_cat(f.image_locals_m.detach()) if with_locals else None,
        image_locals_mask=all_gather_cat(f.image_locals_mask) if with_locals else None,
        text_locals_m=all_gather_padded(f.text_locals_m.detach()) if with_locals else None,
        text_locals_mask=all_gather_padded(f.text_locals_mask, pad_value=False) if with_locals else None,
        ids=all_gather_cat(f.ids),
        row_offset=rank * f.image.shape[0],
    )
