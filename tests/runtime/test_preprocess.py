"""Preprocessing: the same text clean-up as training, JPEG draft decoding close to a full decode,
EXIF orientation, and the pixel cap checked from the header before any pixel is decoded."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from runtime.errors import InvalidInput
from runtime.preprocess import ImageDecoder, clean_text
from train.data.captions import clean_caption


@pytest.mark.parametrize(
    "text",
    ["A dog, running!", "two  men/women on a half-pipe.", '"quoted" (and) #tags: ok?', "ÉCOLE ~ x", ""],
)
def test_text_clean_up_matches_training(text: str) -> None:
    assert clean_text(text) == clean_caption(text, 10**6)


def jpeg(w: int, h: int, exif_orientation: int | None = None) -> bytes:
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h)], -1).astype(np.uint8)
    img = Image.fromarray(pixels)
    buf = io.BytesIO()
    if exif_orientation is None:
        img.save(buf, "JPEG", quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


def test_draft_decode_of_a_large_jpeg_is_close_to_a_full_decode() -> None:
    data = jpeg(1600, 1200)
    got = ImageDecoder(224, 10**8).decode(data).astype(np.float64)
    full = np.asarray(
        Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
    )
    assert got.shape == (224, 224, 3)
    assert np.abs(got - full).mean() < 2.0  # grey levels; the draft decodes at 1/4 scale


def test_exif_orientation_is_applied() -> None:
    upright = ImageDecoder(32, 10**8).decode(jpeg(64, 32))
    rotated = ImageDecoder(32, 10**8).decode(jpeg(64, 32, exif_orientation=6))  # rotate 90° CW
    # the gradient that ran along x now runs along y
    assert upright[:, :, 0].mean(0)[-1] > upright[:, :, 0].mean(0)[0] + 100
    assert abs(rotated[:, :, 0].mean(1)[-1] - rotated[:, :, 0].mean(1)[0]) > 100


def test_pixel_cap_is_checked_from_the_header() -> None:
    big = io.BytesIO()
    Image.new("RGB", (3000, 2000)).save(big, "PNG")  # 6 Mpx, compresses to almost nothing
    with pytest.raises(InvalidInput, match="image of 3000x2000 pixels is over the 5,000,000-pixel cap"):
        ImageDecoder(32, 5_000_000).decode(big.getvalue())
    with pytest.raises(InvalidInput, match="raw pixels of 3000x2000 are over"):
        ImageDecoder(32, 5_000_000).from_pixels(3000, 2000, b"")


def test_truncated_image_is_invalid_input() -> None:
    data = jpeg(64, 64)
    with pytest.raises(InvalidInput, match="could not be decoded"):
        ImageDecoder(32, 10**8).decode(data[: len(data) // 2])
