"""Training pairs and evaluation images from either source, with resumable, seeded sampling.

Map:
- `InputPolicy`: a model's crop and caption clean-up, which its bundle records for serving.
- `PairSource`: JSONL images or generated shapes, flattened to (image, caption, image id) pairs.
- `PairDataset`: item key (pair index, epoch, seed) -> two augmented views + caption + id; a view
  is a pure function of the key. A corrupt image is skipped with a warning that names it (the
  next pair takes its place, so batch shapes never change).
- `EpochBatches`: this rank's batches of one epoch, from a seeded permutation; can start at any
  batch (exact resume) and shards the global batch across ranks.
- `Collate`: stacks views and tokenises the batch, padded to its longest caption.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from train.config import DataConfig, ModelConfig
from train.data.augment import center_square, make_view
from train.data.captions import ImageCaptions, RetrievalSet, load_jsonl, read_held_out, retrieval_set
from train.data.shapes import render, scene, shapes_split
from train.data.tokenizer import TextEncoder

log = logging.getLogger(__name__)

ItemKey = tuple[int, int, int]  # (pair index, epoch, seed)
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class InputPolicy:
    """What happens to a raw image and caption before the views and the tokenizer."""

    center_crop: bool = False  # keep the centred square of the shorter side (CLIP)
    clean_captions: bool = True  # TCL's caption clean-up; False: raw text (CLIP-family)

    @classmethod
    def of(cls, model: ModelConfig) -> InputPolicy:
        """A (resolved) model config's policy: its settings, else its towers' own."""
        clip_family = model.image.kind in ("clip", "siglip")
        fit = model.image.fit or ("center_crop" if model.image.kind == "clip" else "squash")
        clean = model.text.clean_captions
        return cls(fit == "center_crop", (not clip_family) if clean is None else clean)


class PairSource:
    """Images with captions of one split; `pairs[i] = (image index, caption)`."""

    def __init__(self, items: list[ImageCaptions], loader: ImageLoader) -> None:
        self.items = items
        self.loader = loader
        self.pairs = [(i, c) for i, item in enumerate(items) for c in item.captions]

    def image(self, index: int) -> Image.Image:
        return self.loader(self.items[index].image)

    def retrieval_set(self, max_images: int = 0) -> RetrievalSet:
        return retrieval_set(self.items[:max_images] if max_images else self.items)


class ImageLoader:
    """Opens an image reference: a path under `root`, or a shapes scene index."""

    def __init__(
        self, root: Path | None, size_px: int, shapes: tuple[int, str] | None = None,
        center_crop: bool = False,
    ) -> None:  # fmt: skip
        self.root = root
        self.size_px = size_px  # JPEGs are decoded at the smallest scale still >= this side
        self.shapes = shapes  # (seed, split)
        self.center_crop = center_crop

    def __call__(self, ref: str) -> Image.Image:
        if self.shapes is not None:
            seed, split = self.shapes
            return render(scene(seed, split, int(ref)), self.size_px)
        assert self.root is not None
        with Image.open(self.root / ref) as img:
            if img.format == "JPEG":
                img.draft("RGB", (self.size_px, self.size_px))
            rgb = img.convert("RGB")
        if self.center_crop and rgb.width != rgb.height:
            rgb = rgb.crop(center_square(rgb.width, rgb.height))
        return rgb


def make_source(
    cfg: DataConfig, split: str, image_size: int, policy: InputPolicy = InputPolicy()
) -> PairSource:
    """The named split of the configured data, read as the model's `policy` asks."""
    if cfg.source == "shapes":
        if "+" in split:
            raise ValueError(f"data.source = 'shapes' has no splits to join ({split!r})")
        n = cfg.shapes_train_images if split == cfg.train_split else cfg.shapes_val_images
        items = [
            ImageCaptions(str(i), tuple(c))
            for i, c in shapes_split(cfg.shapes_seed, split, n, cfg.shapes_captions)
        ]
        return PairSource(items, ImageLoader(None, image_size, (cfg.shapes_seed, split)))
    if not cfg.jsonl:
        raise ValueError("data.source = 'jsonl' needs data.jsonl, the captions file")
    path = Path(cfg.jsonl)
    root = Path(cfg.image_root) if cfg.image_root else path.parent / "images"
    held_out = read_held_out(cfg.held_out) if cfg.held_out else frozenset()
    items = load_jsonl(path, split, cfg.max_words, held_out, cfg.held_out_split, policy.clean_captions)
    return PairSource(items, ImageLoader(root, image_size, center_crop=policy.center_crop))


@dataclass
class Pair:
    view1: torch.Tensor  # (3, H, W) in [0, 1]
    view2: torch.Tensor
    caption: str
    image_id: int


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, source: PairSource, augment: str, image_size: int) -> None:
        self.source = source
        self.augment = augment
        self.image_size = image_size
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.source.pairs)

    def __getitem__(self, key: ItemKey) -> Pair:
        index, epoch, seed = key
        n = len(self.source.pairs)
        for attempt in range(n):
            image_index, caption = self.source.pairs[(index + attempt) % n]
            if image_index in self.bad:
                continue
            try:
                img = self.source.image(image_index)
            except IMAGE_ERRORS as e:
                self.bad.add(image_index)
                log.warning("skipping unreadable image %s: %s", self.source.items[image_index].image, e)
                continue
            rng = random.Random(f"{seed}/{epoch}/{index}")
            v1 = make_view(self.augment, img, self.image_size, rng)
            v2 = make_view(self.augment, img, self.image_size, rng)
            return Pair(v1, v2, caption, image_index)
        raise RuntimeError("no readable image in the dataset")


class EpochBatches:
    """Batch sampler: this rank's share of each global batch of one epoch's seeded permutation."""

    def __init__(
        self, n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1, start: int = 0
    ) -> None:
        self.n, self.batch_size, self.epoch, self.seed = n, batch_size, epoch, seed
        self.rank, self.world, self.start = rank, world, start

    @staticmethod
    def per_epoch(n: int, batch_size: int, world: int) -> int:
        """Full global batches per epoch (the last partial one is dropped)."""
        return n // (batch_size * world)

    def __len__(self) -> int:
        return self.per_epoch(self.n, self.batch_size, self.world) - self.start

    def __iter__(self) -> Iterator[list[ItemKey]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=gen).tolist()
        g = self.batch_size * self.world
        for b in range(self.start, self.per_epoch(self.n, self.batch_size, self.world)):
            lo = b * g + self.rank * self.batch_size
            yield [(i, self.epoch, self.seed) for i in order[lo : lo + self.batch_size]]


@dataclass
class Batch:
    view1: torch.Tensor  # (B, 3, H, W)
    view2: torch.Tensor  # (B, 3, H, W)
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    ids: torch.Tensor  # (B,)

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in vars(self).values()))


class Collate:
    def __init__(self, text: TextEncoder) -> None:
        self.text = text

    def __call__(self, pairs: list[Pair]) -> Batch:
        input_ids, mask = self.text.encode([p.caption for p in pairs])
        return Batch(
            torch.stack([p.view1 for p in pairs]),
            torch.stack([p.view2 for p in pairs]),
            input_ids,
            mask,
            torch.tensor([p.image_id for p in pairs]),
        )
