"""Evaluation: cross-modal retrieval Recall@K and zero-shot classification.

Retrieval follows the multi-caption protocol (Flickr8k/30k, COCO; shared/data/flickr8k/README.md):
image→text Recall@K counts an image as a hit when any of its captions ranks in the top K of all
captions; text→image Recall@K counts a caption as a hit when its image ranks in the top K of all
images. RSUM is the sum of the six recalls (in percent).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from train.cache import eval_inputs_path, load_or_build
from train.config import DataConfig
from train.data.augment import eval_view, to_tensor
from train.data.captions import RetrievalSet, split_names
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


@dataclass
class RetrievalEmbeddings:
    images: torch.Tensor  # (I, d)
    captions: torch.Tensor  # (C, d)


class RetrievalEvaluator:
    """Recall@1/5/10 both ways and RSUM of a model on one retrieval set.

    The inputs of the set — eval-view pixels and token ids, or, for a model with locked tower
    prefixes, the prefix states — are prepared on the first call and reused: a locked prefix never
    changes during training, so periodic evaluation only runs the trainable part. With `store`
    (a file named by `train.cache.eval_inputs_key`), they are also kept on disk for the next run
    that shares them.
    """

    def __init__(
        self,
        rset: RetrievalSet,
        loader: ImageLoader,
        text: TextEncoder,
        device: torch.device,
        batch_size: int = 128,
        store: Path | None = None,
    ) -> None:
        self.rset, self.loader, self.text, self.device, self.batch_size = (
            rset,
            loader,
            text,
            device,
            batch_size,
        )
        self._images: list[torch.Tensor] | None = None  # per batch: pixels or prefix states
        self._texts: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per batch: (ids|states, mask)
        self.store = store

    def _prepare(self, model: DualEncoder) -> None:
        if self.store is None:
            self._images, self._texts = self._inputs(model)
            return
        stored = load_or_build(
            self.store, lambda: dict(zip(("images", "texts"), self._inputs(model), strict=True))
        )
        self._images = [x.to(self.device) for x in stored["images"]]
        self._texts = [(h.to(self.device), m.to(self.device)) for h, m in stored["texts"]]

    @torch.no_grad()
    def _inputs(
        self, model: DualEncoder
    ) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
        """Per batch: the images' and the captions' inputs to the model's trainable stages."""
        size, refs, caps, b = (
            model.cfg.image.image_size,
            self.rset.images,
            self.rset.captions,
            self.batch_size,
        )
        images = []
        for lo in range(0, len(refs), b):
            pixels = torch.stack([to_tensor(eval_view(self.loader(r), size)) for r in refs[lo : lo + b]])
            pixels = pixels.to(self.device)
            images.append(model.image_input(pixels))  # normalised pixels, or locked prefix states
        texts = []
        for lo in range(0, len(caps), b):
            ids, mask = (t.to(self.device) for t in self.text.encode(caps[lo : lo + b]))
            texts.append((model.text_input(ids, mask), mask))  # token ids, or locked prefix states
        return images, texts

    @torch.no_grad()
    def __call__(self, model: DualEncoder) -> tuple[dict[str, float], RetrievalEmbeddings]:
        was_training = model.training
        model.eval()  # before preparing too: a mirror-averaged model's inputs differ in eval mode
        try:
            if self._images is None:
                self._prepare(model)
            assert self._images is not None and self._texts is not None
            images = torch.cat(
                [
                    model.encode_image(x, prefixed=True, with_locals=False).global_.float().cpu()
                    for x in self._images
                ]
            )
            captions = torch.cat(
                [
                    model.encode_text(h, m, prefixed=True, with_locals=False).global_.float().cpu()
                    for h, m in self._texts
                ]
            )
        finally:
            model.train(was_training)
        metrics = recall_at_k(images @ captions.T, torch.tensor(self.rset.caption_image))
        return metrics, RetrievalEmbeddings(images, captions)


def zero_shot_accuracy(
    image_embeddings: torch.Tensor,  # (N, d)
    labels: torch.Tensor,  # (N,) class indices
    class_embeddings: torch.Tensor,  # (n_classes, d), e.g. of "a photo of a {class}"
) -> float:
    """Top-1 accuracy (percent) of nearest-prompt classification."""
    predicted = (image_embeddings @ class_embeddings.T).argmax(dim=1)
    return 100.0 * (predicted == labels).float().mean().item()


def unseen_split(data: DataConfig, split: str, what: str) -> None:
    """Refuses a split the run trained on: the held-out split of a run that did not hold it out, or
    any of its training splits (its one split, or a refit's dev). Unlike best.pt's choice in the
    loop, a single training split is refused too: a number reported from here claims unseen data."""
    if split == data.held_out_split and not data.held_out:
        raise ValueError(
            f"{what} was trained without data.held_out: its {split!r} images are among the ones it "
            "trained on, so its numbers there would flatter it"
        )
    if split in split_names(data.train_split):
        raise ValueError(
            f"{what} was trained on the {split!r} split (data.train_split {data.train_split!r}), so "
            "its numbers there would flatter it"
        )


def evaluate_checkpoint(path: str, split: str, device: str = "cpu") -> dict[str, float]:
    """Recall@1/5/10 both ways and RSUM of a checkpoint on a split of the data it was trained with
    (`python -m train --eval-only CKPT --split test`). A held-out split is refused for a run that
    did not hold it out: its images would have been trained on. A run with a feature cache
    shares the split's locked-prefix states through its cache directory, as its training did."""
    from tokenizers import Tokenizer

    from train.checkpoint import load_model
    from train.data.datasets import InputPolicy, make_source
    from train.data.tokenizer import text_encoder

    model, ckpt = load_model(path, device)
    cfg = ckpt["config"]
    unseen_split(cfg.data, split, path)
    source = make_source(cfg.data, split, cfg.model.image.image_size, InputPolicy.of(cfg.model))
    text = text_encoder(cfg.model, Tokenizer.from_str(ckpt["tokenizer"]))
    store = None
    if cfg.lock.cache:  # lock as in training: the store holds the prefix states, the rest runs here
        model.lock(cfg.lock.image_stages, cfg.lock.text_stages, cfg.lock.freeze_batchnorm)
        split_cfg = replace(cfg, data=replace(cfg.data, val_split=split, val_max_images=0))
        store = eval_inputs_path(
            split_cfg, ckpt["tokenizer"], ckpt.get("prefix_weights", ""), Path(path).parent
        )
    evaluator = RetrievalEvaluator(
        source.retrieval_set(0), source.loader, text, torch.device(device), store=store
    )
    metrics, _ = evaluator(model.to(device))
    return metrics
