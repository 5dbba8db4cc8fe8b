"""Preprocessing: the same text clean-up as training (or none, for a raw-text bundle), JPEG draft
decoding close to a full decode, EXIF orientation, the pixel cap checked from the header before
any pixel is decoded, CLIP's centre crop as training crops, and padding to the full length."""

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


@pytest.mark.parametrize("size", [(64, 32), (31, 80), (48, 48), (7, 6)])
def test_center_crop_is_the_training_loaders(size: tuple[int, int], tmp_path) -> None:
    """A CLIP bundle (`crop: center`) serves the pixels its model was trained and evaluated on:
    the training loader's crop, then the eval view's resize — from a PNG and from raw pixels."""
    from runtime.preprocess import center_square
    from train.data.augment import center_square as training_center_square
    from train.data.augment import eval_view
    from train.data.datasets import ImageLoader

    w, h = size
    assert center_square(w, h) == training_center_square(w, h)
    left, top, right, bottom = center_square(w, h)
    assert (
        right - left == bottom - top == min(w, h)
        and abs((w - right) - left) <= 1
        and abs((h - bottom) - top) <= 1
    )
    pixels = (np.random.default_rng(w * h).random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    trained = np.asarray(eval_view(ImageLoader(tmp_path, 16, center_crop=True)("x.png"), 16))
    decoder = ImageDecoder(16, 10**8, center_crop=True)
    assert np.array_equal(decoder.decode((tmp_path / "x.png").read_bytes()), trained)
    assert np.array_equal(decoder.from_pixels(w, h, pixels.tobytes()), trained)
    squashed = ImageDecoder(16, 10**8).decode((tmp_path / "x.png").read_bytes())
    assert np.array_equal(squashed, np.asarray(eval_view(ImageLoader(tmp_path, 16)("x.png"), 16)))
    assert np.array_equal(squashed, trained) == (w == h)


def test_a_raw_text_bundle_skips_the_clean_up_and_a_full_length_one_pads_to_max_len(tmp_path) -> None:
    from dataclasses import replace
    from types import SimpleNamespace

    from tokenizers import Tokenizer, models, pre_tokenizers

    from runtime.bundle import TextSpec
    from runtime.preprocess import TextTokenizer

    vocab = {"[PAD]": 0, "[UNK]": 1, "a": 2, "dog": 3, "dog!": 4, "A": 5}
    tok = Tokenizer(models.WordLevel(vocab, "[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "tokenizer.json"))
    spec = TextSpec("tokenizer.json", 6, False, clean=True, pad_to_max_len=False, pad_id=0, cls_id=0,
                    sep_id=0)  # fmt: skip

    def tokenizer(**changes: bool) -> TextTokenizer:  # what TextTokenizer reads of a bundle
        bundle = SimpleNamespace(
            manifest=SimpleNamespace(text=replace(spec, **changes)), path=tmp_path.joinpath
        )
        return TextTokenizer(bundle, 100)  # type: ignore[arg-type]

    assert tokenizer().encode("A dog!").tolist() == [2, 3]  # lowercased, punctuation gone
    assert tokenizer(clean=False).encode("A dog!").tolist() == [5, 4]  # as written
    rows = [np.array([2, 3]), np.array([2])]
    ids, mask = tokenizer().pad(rows)
    assert ids.shape == (2, 2) and mask.tolist() == [[1, 1], [1, 0]]
    ids, mask = tokenizer(pad_to_max_len=True).pad(rows)
    assert ids.tolist() == [[2, 3, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0]] and mask.sum() == 3
