"""Image views with Pillow only (torchvision cannot be installed beside this torch).

- `tcl_view`: TCL's pre-training recipe (Yang et al. 2022, after ALBEF): random resized crop
  (scale 0.5-1), horizontal flip, colour jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2,
  Gaussian blur (σ 0.1-2) p 0.5, then two RandAugment ops at magnitude 7.
- `light_view`: colour jitter and blur only — geometry kept, for data whose captions describe
  positions (shapes).
- `eval_view`: plain resize; `mirror_view`: the same, mirrored or not — "mirror" draws it with
  p 0.5, and a feature cache of "mirror" views holds both (view v is mirrored when v is odd).
Every random draw comes from the `random.Random` passed in, so a view is a pure function of the
sample's seed (exact resume, identical DDP ranks).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

BICUBIC = Image.Resampling.BICUBIC


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor in [0, 1], (3, H, W)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def center_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) of the centred square of the shorter side: CLIP's
    crop, which `ImageLoader` applies before any view (the runtime's twin is
    `runtime.preprocess.center_square`; a test holds them equal)."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def eval_view(img: Image.Image, size_px: int) -> Image.Image:
    return img.convert("RGB").resize((size_px, size_px), BICUBIC)


def random_resized_crop(
    img: Image.Image, size_px: int, rng: random.Random, scale: tuple[float, float] = (0.5, 1.0)
) -> Image.Image:
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return img.resize((size_px, size_px), BICUBIC, box=(x, y, x + cw, y + ch))
    return img.resize((size_px, size_px), BICUBIC)


def _hue_shift(img: Image.Image, shift: float) -> Image.Image:
    hsv = np.asarray(img.convert("HSV"), dtype=np.uint8).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(shift * 255)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def colour_jitter(
    img: Image.Image, rng: random.Random, strength: float = 0.4, hue: float = 0.1
) -> Image.Image:
    ops: list[Callable[[Image.Image], Image.Image]] = [
        lambda im: ImageEnhance.Brightness(im).enhance(rng.uniform(1 - strength, 1 + strength)),
        lambda im: ImageEnhance.Contrast(im).enhance(rng.uniform(1 - strength, 1 + strength)),
        lambda im: ImageEnhance.Color(im).enhance(rng.uniform(1 - strength, 1 + strength)),
        lambda im: _hue_shift(im, rng.uniform(-hue, hue)),
    ]
    rng.shuffle(ops)
    for op in ops:
        img = op(img)
    return img


def _affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, BICUBIC, fillcolor=(128, 128, 128))


def rand_augment(img: Image.Image, rng: random.Random, n_ops: int = 2, magnitude: int = 7) -> Image.Image:
    """TCL's RandomAugment(2, 7) op list: identity, autocontrast, equalize, brightness, sharpness,
    shear x/y, translate x/y, rotate; each applied with its sign drawn at random."""
    level = magnitude / 10.0
    w, h = img.size

    def sign() -> float:
        return 1.0 if rng.random() < 0.5 else -1.0

    ops: dict[str, Callable[[Image.Image], Image.Image]] = {
        "identity": lambda im: im,
        "autocontrast": ImageOps.autocontrast,
        "equalize": ImageOps.equalize,
        "brightness": lambda im: ImageEnhance.Brightness(im).enhance(1 + sign() * 0.9 * level),
        "sharpness": lambda im: ImageEnhance.Sharpness(im).enhance(1 + sign() * 0.9 * level),
        "shear_x": lambda im: _affine(im, (1, sign() * 0.3 * level, 0, 0, 1, 0)),
        "shear_y": lambda im: _affine(im, (1, 0, 0, sign() * 0.3 * level, 1, 0)),
        "translate_x": lambda im: _affine(im, (1, 0, sign() * 0.3 * level * w, 0, 1, 0)),
        "translate_y": lambda im: _affine(im, (1, 0, 0, 0, 1, sign() * 0.3 * level * h)),
        "rotate": lambda im: im.rotate(sign() * 30 * level, BICUBIC, fillcolor=(128, 128, 128)),
    }
    for name in rng.sample(sorted(ops), n_ops):
        img = ops[name](img)
    return img


def tcl_view(img: Image.Image, size_px: int, rng: random.Random) -> Image.Image:
    img = random_resized_crop(img.convert("RGB"), size_px, rng)
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    if rng.random() < 0.8:
        img = colour_jitter(img, rng)
    if rng.random() < 0.2:
        img = ImageOps.grayscale(img).convert("RGB")
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.1, 2.0)))
    return rand_augment(img, rng)


def light_view(img: Image.Image, size_px: int, rng: random.Random) -> Image.Image:
    img = eval_view(img, size_px)
    if rng.random() < 0.8:
        img = colour_jitter(img, rng, strength=0.2, hue=0.02)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.1, 0.8)))
    return img


def mirror_view(img: Image.Image, size_px: int, mirrored: bool) -> Image.Image:
    img = eval_view(img, size_px)
    return ImageOps.mirror(img) if mirrored else img


def make_view(
    kind: str, img: Image.Image, size_px: int, rng: random.Random, index: int | None = None
) -> torch.Tensor:
    """One view (3, H, W) in [0, 1] of `img` by the named recipe.

    `index`: the view's number in a feature cache; "mirror" then mirrors odd views instead of
    drawing, so that two cached views are the image and its mirror.
    """
    if kind == "mirror":
        out = mirror_view(img, size_px, rng.random() < 0.5 if index is None else index % 2 == 1)
    elif kind == "tcl":
        out = tcl_view(img, size_px, rng)
    elif kind == "light":
        out = light_view(img, size_px, rng)
    elif kind == "none":
        out = eval_view(img, size_px)
    else:
        raise ValueError(f"unknown augmentation {kind!r}")
    return to_tensor(out)
