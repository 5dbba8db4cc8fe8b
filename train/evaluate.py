"""Evaluation: cross-modal retrieval Recall@K and zero-shot classification.

Retrieval follows the multi-caption protocol (Flickr8k/30k, COCO; shared/data/flickr8k/README.md):
image→text Recall@K counts an image as a hit when any of its captions ranks in the top K of all
captions; text→image Recall@K counts a caption as a hit when its image ranks in the top K of all
images. RSUM is the sum of the six recalls (in percent).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from train.data.augment import eval_view, to_tensor
from train.data.captions import RetrievalSet
from train.data.datasets import ImageLoader
from train.data.tokenizer import TextEncoder
from train.model import DualEncoder

KS = (1, 5, 10)


def recall_at_k(similarity: torch.Tensor, caption_image: torch.Tensor) -> dict[str, float]:
    """similarity (n_images, n_captions); caption_image (n_captions,) -> recalls in percent and rsum."""
    n_images = similarity.shape[0]
    # image -> text: the best rank among the image's own captions.
    order = similarity.argsort(dim=1, descending=True)  # (I, C)
    own = caption_image[order] == torch.arange(n_images)[:, None]  # (I, C) bool
    first_hit_i2t = own.float().argmax(dim=1)  # (I,) rank of the first own caption
    first_hit_i2t[~own.any(dim=1)] = similarity.shape[1]  # an image without captions never hits
    # text -> image: the rank of the caption's image.
    order_t = similarity.T.argsort(dim=1, descending=True)  # (C, I)
    first_hit_t2i = (order_t == caption_image[:, None]).float().argmax(dim=1)  # (C,)
    out: dict[str, float] = {}
    for k in KS:
        out[f"i2t_r{k}"] = 100.0 * (first_hit_i2t < k).float().mean().item()
    for k in KS:
        out[f"t2i_r{k}"] = 100.0 * (first_hit_t2i < k).float().mean().item()
    out["rsum"] = sum(out.values())
    return out


@torch.no_grad()
def embed_images(
    model: DualEncoder, loader: ImageLoader, refs: list[str], batch_size: int, device: torch.device
) -> torch.Tensor:
    """(n, d) online image embeddings of the eval view of each image."""
    size = model.cfg.image.image_size
    out = []
    for lo in range(0, len(refs), batch_size):
        pixels = torch.stack([to_tensor(eval_view(loader(r), size)) for r in refs[lo : lo + batch_size]])
        out.append(model.encode_image(pixels.to(device)).global_.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_texts(
    model: DualEncoder, text: TextEncoder, captions: list[str], batch_size: int, device: torch.device
) -> torch.Tensor:
    """(n, d) online text embeddings."""
    out = []
    for lo in range(0, len(captions), batch_size):
        ids, mask = text.encode(captions[lo : lo + batch_size])
        out.append(model.encode_text(ids.to(device), mask.to(device)).global_.float().cpu())
    return torch.cat(out)


@dataclass
class RetrievalEmbeddings:
    images: torch.Tensor  # (I, d)
    captions: torch.Tensor  # (C, d)


def evaluate_retrieval(
    model: DualEncoder,
    rset: RetrievalSet,
    loader: ImageLoader,
    text: TextEncoder,
    device: torch.device,
    batch_size: int = 128,
) -> tuple[dict[str, float], RetrievalEmbeddings]:
    """Recall@1/5/10 both ways and RSUM on a retrieval set (model switched to eval and back)."""
    was_training = model.training
    model.eval()
    try:
        images = embed_images(model, loader, rset.images, batch_size, device)
        captions = embed_texts(model, text, rset.captions, batch_size, device)
    finally:
        model.train(was_training)
    metrics = recall_at_k(images @ captions.T, torch.tensor(rset.caption_image))
    return metrics, RetrievalEmbeddings(images, captions)


def zero_shot_accuracy(
    image_embeddings: torch.Tensor,  # (N, d)
    labels: torch.Tensor,  # (N,) class indices
    class_embeddings: torch.Tensor,  # (n_classes, d), e.g. of "a photo of a {class}"
) -> float:
    """Top-1 accuracy (percent) of nearest-prompt classification."""
    predicted = (image_embeddings @ class_embeddings.T).argmax(dim=1)
    return 100.0 * (predicted == labels).float().mean().item()
