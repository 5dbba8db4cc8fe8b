"""Feature queues (MoCo/ALBEF): a ring buffer of gathered momentum embeddings with sample ids.

One `PairQueue` holds image and text momentum features side by side with the image id of each
pair, so queue targets can put mass on every caption of the same image (docs/architecture.md §2). Entries
are buffers (checkpointed, never trained); only the filled part is ever read.
"""

from __future__ import annotations

import torch
from torch import nn


class PairQueue(nn.Module):
    """Ring buffer of (image feature, text feature, id) for the most recent `size` samples."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("image", torch.zeros(size, dim))  # (M, d)
        self.register_buffer("text", torch.zeros(size, dim))  # (M, d)
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))  # (M,)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def contents(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image (n, d), text (n, d), ids (n,)) for the n filled entries, detached."""
        n = int(self.filled)
        return self.image[:n].detach(), self.text[:n].detach(), self.ids[:n].detach()

    @torch.no_grad()
    def enqueue(self, image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor) -> None:
        """Appends a gathered batch (G, d), (G, d), (G,); the queue size must be a multiple of G."""
        g = image.shape[0]
        if self.size == 0:
            return
        if self.size % g:
            raise ValueError(f"queue size {self.size} is not a multiple of the global batch {g}")
        p = int(self.ptr)
        self.image[p : p + g] = image.to(self.image.dtype)
        self.text[p : p + g] = text.to(self.text.dtype)
        self.ids[p : p + g] = ids
        self.ptr.fill_((p + g) % self.size)
        self.filled.fill_(min(int(self.filled) + g, self.size))
