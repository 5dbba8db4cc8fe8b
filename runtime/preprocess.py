"""Turning request items into engine inputs, with no float work per pixel: the image graph takes
uint8 NHWC and normalises inside.

- `ImageDecoder`: encoded bytes (JPEG, PNG, WebP) or raw RGB -> uint8 (S, S, 3). The header is read
  first and a decoded-pixel cap refuses decompression bombs before any pixel is decoded; JPEGs
  decode at a reduced scale with `draft` (DCT scaling, never below the target size); EXIF
  orientation applied; 16-bit greyscale scaled to 8 bits (Pillow's RGB conversion would clip it
  to white); RGB; for a CLIP bundle (`crop: "center"`) the centred square of the shorter side;
  bicubic resize to the manifest's square size, as the training views and the export parity
  inputs do (`train.data.datasets.ImageLoader`, `train.data.augment.eval_view`).
- `TextTokenizer`: the training caption clean-up (TCL's `pre_caption` without its word cap; tokens
  are capped instead) unless the bundle serves raw text (`clean: false`, CLIP-family), the
  bundle's tokenizer.json, truncation to the manifest's max length. Items are tokenised one by
  one; the batcher pads each batch to its longest sequence, or to max_len (`pad_to_max_len`).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tokenizers import Tokenizer

from runtime.bundle import Bundle
from runtime.errors import BundleError, InvalidInput

BICUBIC = Image.Resampling.BICUBIC
EXIF_ORIENTATION = 0x0112
FORMATS = ("JPEG", "PNG", "WEBP")
_PUNCT = re.compile(r"([,.'!?\"()*#:;~])")  # train/data/captions.py, TCL's pre_caption
_SPACES = re.compile(r"\s{2,}")


def clean_text(text: str) -> str:
    """The training caption clean-up: lowercase, strip punctuation, split - and /."""
    text = _PUNCT.sub("", text.lower()).replace("-", " ").replace("/", " ")
    return _SPACES.sub(" ", text).strip()


def center_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) of the centred square of the shorter side (the training
    twin is `train.data.datasets.center_square`; a test holds them equal)."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


@dataclass(frozen=True)
class ImageDecoder:
    size_px: int  # the graph's square input side
    max_pixels: int  # decoded width * height cap
    center_crop: bool = False  # crop the centred square before the resize (ImageSpec.crop "center")

    @classmethod
    def for_bundle(cls, bundle: Bundle, max_pixels: int) -> ImageDecoder:
        spec = bundle.manifest.image
        if spec.crop not in ("none", "center"):
            raise BundleError(f"bundle {bundle.root}: image crop {spec.crop!r} is not 'none' or 'center'")
        return cls(spec.size_px, max_pixels, spec.crop == "center")

    def decode(self, data: bytes) -> np.ndarray:
        """Encoded image -> uint8 (S, S, 3). Raises InvalidInput saying what is wrong."""
        if not data:
            raise InvalidInput("image is empty (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
            w, h = img.size
            if w * h > self.max_pixels:
                raise InvalidInput(f"image of {w}x{h} pixels is over the {self.max_pixels:,}-pixel cap")
            if img.format == "JPEG":
                img.draft("RGB", (self.size_px, self.size_px))  # DCT downscale, ≥ the target
            if img.getexif().get(EXIF_ORIENTATION, 1) != 1:  # exif_transpose copies even when upright
                img = ImageOps.exif_transpose(img)
            return self._to_array(img)
        except InvalidInput:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # Pillow's own cap
            raise InvalidInput(f"image is over the {self.max_pixels:,}-pixel cap ({e})") from e
        except UnidentifiedImageError as e:  # its message holds a memory address
            raise InvalidInput(
                f"image could not be decoded ({len(data)} bytes): not a JPEG, PNG or WebP"
            ) from e
        except (OSError, ValueError, SyntaxError) as e:
            raise InvalidInput(f"image could not be decoded ({len(data)} bytes): {e}") from e

    def from_pixels(self, width: int, height: int, rgb: bytes) -> np.ndarray:
        """Raw RGB uint8 (height, width, 3) -> uint8 (S, S, 3)."""
        if width < 1 or height < 1:
            raise InvalidInput(f"raw pixels of {width}x{height}: both sides must be ≥ 1")
        if width * height > self.max_pixels:
            raise InvalidInput(f"raw pixels of {width}x{height} are over the {self.max_pixels:,}-pixel cap")
        if len(rgb) != width * height * 3:
            raise InvalidInput(
                f"raw pixels of {width}x{height} need {width * height * 3} bytes (RGB), got {len(rgb)}"
            )
        array = np.frombuffer(rgb, dtype=np.uint8).reshape(height, width, 3)  # (H, W, 3)
        if width == height == self.size_px:  # nothing to crop or resize
            return array
        return self._to_array(Image.fromarray(array, "RGB"))

    def _to_array(self, img: Image.Image) -> np.ndarray:
        if img.mode == "I" or img.mode.startswith("I;16"):  # 16-bit greyscale PNG: keep the top 8 bits
            wide = np.asarray(img).astype(np.int64)  # (H, W), 0..65535
            img = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L")
        if img.mode != "RGB":  # convert() copies even to the same mode
            img = img.convert("RGB")
        if self.center_crop and img.width != img.height:
            img = img.crop(center_square(img.width, img.height))
        if img.size != (self.size_px, self.size_px):
            img = img.resize((self.size_px, self.size_px), BICUBIC)
        return np.asarray(img, dtype=np.uint8)  # (S, S, 3)


class TextTokenizer:
    """The bundle's tokenizer: text -> int64 token ids (≤ max_len, [CLS] and [SEP] included)."""

    def __init__(self, bundle: Bundle, max_chars: int) -> None:
        spec = bundle.manifest.text
        self.tokenizer = Tokenizer.from_file(str(bundle.path(spec.tokenizer)))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(spec.max_len)
        self.max_len = spec.max_len
        self.pad_id = spec.pad_id
        self.clean = spec.clean
        self.pad_to_max_len = spec.pad_to_max_len
        self.max_chars = max_chars

    def encode(self, text: str) -> np.ndarray:
        if len(text) > self.max_chars:
            raise InvalidInput(f"text of {len(text)} characters is over the {self.max_chars}-character cap")
        text = clean_text(text) if self.clean else text
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)  # (L,)

    def pad(self, rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Token rows -> (input_ids, attention_mask), both (B, L) int64, L = the longest row (or
        max_len for a tower that pools the last position)."""
        width = self.max_len if self.pad_to_max_len else max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)  # (B, L)
        mask = np.zeros((len(rows), width), dtype=np.int64)  # (B, L)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return ids, mask
