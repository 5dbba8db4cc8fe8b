"""Model: towers (ViT, EfficientNet-lite0, BERT), heads, codebook, momentum twin, queue
(docs/architecture.md §2)."""

from train.model.dual import DualEncoder, Encoded, resolve_config

__all__ = ["DualEncoder", "Encoded", "resolve_config"]
