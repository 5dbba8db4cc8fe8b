"""Feature caches for locked tower prefixes: compute the frozen part of each tower once.

With `lock.cache = true`, every training image gets `cache_views` augmented views pushed through
the locked image stages, and every caption through the locked text stages; both are stored in
float16 (in memory, and on disk as two files — image views, text — each under a key of everything
that determines it, so runs that differ only in objective or optimiser share a cache, and runs that
differ only in the text lock share the image views). Each step then draws two distinct cached
views per image: augmentation variety at a fraction of the cost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from train.config import TrainConfig, to_dict
from train.data.augment import make_view
from train.data.datasets import IMAGE_ERRORS, Batch, EpochBatches, PairSource
from train.data.tokenizer import TextEncoder
from train.model import DualEncoder
from train.model.tower import locked_parts, resolve_locked

log = logging.getLogger(__name__)
CACHE_LOG_EVERY_S = 60.0  # how often a cache build without a progress bar says how far it is


@dataclass
class FeatureCache:
    images: torch.Tensor  # (n_images, V, *prefix) float16
    text: torch.Tensor  # (n_captions, Lmax[, W]) float16 states, or int64 ids when text is not locked
    text_mask: torch.Tensor  # (n_captions, Lmax) int64
    pair_image: torch.Tensor  # (n_captions,) image index of each caption (= pair)


# the data fields that decide which images are in the training split, and their views
IMAGE_DATA_FIELDS = ("source", "jsonl", "image_root", "train_split", "held_out", "held_out_split", "augment")
# augmentations whose cached views draw nothing (view v of an image is fixed): every seed shares them
SEEDLESS_VIEWS = ("mirror", "none")


def cache_keys(cfg: TrainConfig, tokenizer_json: str, prefix_weights: str = "") -> tuple[str, str]:
    """Hashes of everything the cached image views and the cached text depend on, in that order.

    Two keys, two files: runs that share the image lock but not the text lock (the two stages of
    LP-FT) reuse the image views, the costly part. `prefix_weights`: the locked prefixes' digest
    (`prefix_weights_digest`) when they are not the weights the config names — a run started from
    a checkpoint whose locked stages were trained elsewhere.
    """
    image_parts, text_parts = _key_parts(cfg, tokenizer_json, prefix_weights)
    return _digest(image_parts), _digest(text_parts)


def eval_inputs_key(cfg: TrainConfig, tokenizer_json: str, prefix_weights: str = "") -> str:
    """Hash of everything a split's locked-prefix states for evaluation depend on."""
    image_parts, text_parts = _key_parts(cfg, tokenizer_json, prefix_weights)
    image_parts["image"] = to_dict(cfg.model.image)  # mirror_average doubles the images evaluated
    del image_parts["seed"]  # evaluation views are never drawn
    split = {"split": cfg.data.val_split, "max_images": cfg.data.val_max_images}
    return _digest({"image": image_parts, "text": text_parts, "eval": split, "version": 1})


def cache_directory(cfg: TrainConfig, run_dir: Path) -> Path:
    """Where a run's feature caches and evaluation stores live: `lock.cache_dir`, or RUN/cache."""
    return Path(cfg.lock.cache_dir) if cfg.lock.cache_dir else run_dir / "cache"


def eval_inputs_path(cfg: TrainConfig, tokenizer_json: str, prefix_weights: str, run_dir: Path) -> Path:
    """The file of the validation split's (`cfg.data.val_split`) locked-prefix states."""
    return cache_directory(cfg, run_dir) / f"{eval_inputs_key(cfg, tokenizer_json, prefix_weights)}-eval.pt"


def prefix_weights_digest(model: DualEncoder, image_stages: int, text_stages: int) -> str:
    """sha256 of the weights (parameters and buffers) of both towers' locked prefixes."""
    digest = hashlib.sha256()
    for tower, stages in ((model.online.image_tower, image_stages), (model.online.text_tower, text_stages)):
        modules, params = locked_parts(tower, resolve_locked(tower, stages))
        tensors = [t for m in modules for t in m.state_dict().values()] + list(params)
        for t in tensors:
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _key_parts(cfg: TrainConfig, tokenizer_json: str, prefix_weights: str) -> tuple[dict, dict]:
    data = to_dict(cfg.data)
    image = to_dict(cfg.model.image)
    del image["mirror_average"]  # an eval-mode choice: training views are single either way
    image_parts = {
        "image": image,
        "lock": [cfg.lock.image_stages, cfg.lock.cache_views],
        "data": {k: data[k] for k in IMAGE_DATA_FIELDS if k in data}
        | {k: v for k, v in data.items() if k.startswith("shapes")},
        "seed": 0 if cfg.data.augment in SEEDLESS_VIEWS else cfg.run.seed,
        "version": 2,
    }
    if cfg.model.init:  # other weights of the same shapes: other features
        image_parts["init"] = _weights_identity(cfg.model.init)
    text_parts = {
        "text": to_dict(cfg.model.text),
        "lock": cfg.lock.text_stages,
        "data": {
            k: v for k, v in data.items() if k not in ("workers", "val_split", "val_max_images", "augment")
        },
        "tokenizer": hashlib.sha256(tokenizer_json.encode()).hexdigest(),
        "version": 2,
    }
    if cfg.model.init:
        text_parts["init"] = image_parts["init"]
    if prefix_weights:  # left out otherwise, so that caches made before it keep their keys
        image_parts["weights"] = text_parts["weights"] = prefix_weights
    return image_parts, text_parts


def _digest(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def build_cache(
    model: DualEncoder,
    source: PairSource,
    text: TextEncoder,
    cfg: TrainConfig,
    device: torch.device,
    directory: Path,
    show_progress: bool,
    prefix_weights: str = "",
) -> FeatureCache:
    """Loads the image and text parts of the cache from `directory`, computing (and saving) the missing."""
    if model.image_locked == 0:
        raise ValueError("lock.cache needs lock.image_stages > 0 (nothing to cache otherwise)")
    image_key, text_key = cache_keys(cfg, text.tokenizer.to_str(), prefix_weights)
    model.eval()
    images = load_or_build(
        directory / f"{image_key}-images.pt",
        lambda: {"images": _image_views(model, source, cfg, device, show_progress)},
    )["images"]
    texts = load_or_build(
        directory / f"{text_key}-text.pt", lambda: _text_states(model, source, text, device)
    )
    return FeatureCache(images, texts["text"], texts["text_mask"], texts["pair_image"])


def load_or_build(path: Path, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The tensors saved at `path`, or `build()`'s, saved there first (atomically)."""
    if path.is_file():
        log.info("feature cache: loading %s", path)
        return torch.load(path, weights_only=True)
    log.info("feature cache: building %s (once; later runs of these inputs load it)", path)
    tensors = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(tensors, tmp)
    tmp.replace(path)
    log.info("feature cache: wrote %s (%.2f GB)", path, path.stat().st_size / 1e9)
    return tensors


def _image_views(
    model: DualEncoder, source: PairSource, cfg: TrainConfig, device: torch.device, show_progress: bool
) -> torch.Tensor:
    """(n_images, V, *prefix) float16: each view through the locked image stages."""
    views = cfg.lock.cache_views
    loader = torch.utils.data.DataLoader(
        _CacheViews(source, cfg.data.augment, model.cfg.image.image_size, views, cfg.run.seed),
        batch_size=64,
        num_workers=cfg.data.workers,
    )  # views are decoded and augmented in workers while the main process runs the prefix
    chunks = []
    total = len(source.items) * views
    bar = tqdm(total=total, desc="cache images", unit="view", disable=not show_progress)
    done, t0, next_log_s = 0, time.monotonic(), CACHE_LOG_EVERY_S
    for pixels in loader:
        chunks.append(model.image_prefix(pixels.to(device)).half().cpu())
        bar.update(len(pixels))
        done += len(pixels)
        if not show_progress and time.monotonic() - t0 >= next_log_s:  # a log line where no bar shows
            log.info("feature cache: %d of %d image views (%.0f s)", done, total, time.monotonic() - t0)
            next_log_s += CACHE_LOG_EVERY_S
    bar.close()
    return torch.cat(chunks).view(len(source.items), views, *chunks[0].shape[1:])


def _text_states(
    model: DualEncoder, source: PairSource, text: TextEncoder, device: torch.device
) -> dict[str, torch.Tensor]:
    """Every caption's locked text prefix (float16 states), or its token ids when text is not locked."""
    ids, mask = text.encode([c for _, c in source.pairs])
    if model.text_locked:
        states = [
            model.text_prefix(ids[lo : lo + 256].to(device), mask[lo : lo + 256].to(device)).half().cpu()
            for lo in range(0, len(ids), 256)
        ]
        text_tensor = torch.cat(states)
    else:
        text_tensor = ids
    return {"text": text_tensor, "text_mask": mask, "pair_image": torch.tensor([i for i, _ in source.pairs])}


class _CacheViews(torch.utils.data.Dataset):
    """View v of image i, for i in images, v in range(views): a pure function of (seed, i, v)."""

    def __init__(self, source: PairSource, augment: str, size_px: int, views: int, seed: int) -> None:
        self.source, self.augment, self.size_px, self.views, self.seed = source, augment, size_px, views, seed

    def __len__(self) -> int:
        return len(self.source.items) * self.views

    def __getitem__(self, k: int) -> torch.Tensor:
        i, v = divmod(k, self.views)
        rng = random.Random(f"cache/{self.seed}/{i}/{v}")
        try:
            image = self.source.image(i)
        except IMAGE_ERRORS as e:  # cached as a blank view; the warning names the file
            log.warning("unreadable image %s cached as blank: %s", self.source.items[i].image, e)
            image = Image.new("RGB", (self.size_px, self.size_px), (128, 128, 128))
        return make_view(self.augment, image, self.size_px, rng, index=v)


def cached_batches(cache: FeatureCache, sampler: EpochBatches, text_is_states: bool) -> Iterator[Batch]:
    """Batches of prefix states: two distinct cached views per image, the caption's text prefix."""
    views = cache.images.shape[1]
    for keys in sampler:
        index = torch.tensor([k[0] for k in keys])
        picks = [
            random.Random(f"{seed}/{epoch}/{i}").sample(range(views), 2) if views > 1 else [0, 0]
            for i, epoch, seed in keys
        ]  # one cached view (no augmentation): both "views" are that one
        image = cache.pair_image[index]  # (B,)
        v1 = cache.images[image, torch.tensor([p[0] for p in picks])].float()  # (B, *prefix)
        v2 = cache.images[image, torch.tensor([p[1] for p in picks])].float()
        mask = cache.text_mask[index]  # (B, Lmax)
        width = int(mask.sum(1).max())
        text = cache.text[index, :width]
        yield Batch(v1, v2, text.float() if text_is_states else text, mask[:, :width], image)


def _weights_identity(init: str) -> list:
    """A CLIP-family checkpoint directory's weights, named by path, size and modification time
    (hashing gigabytes for a cache key would cost what the cache saves)."""
    files = sorted(p for p in Path(init).glob("*") if p.suffix in (".safetensors", ".bin"))
    return [str(Path(init).resolve())] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
