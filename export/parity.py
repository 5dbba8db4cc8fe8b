"""Parity checks: a comparator in the manner of Polygraphy's (max |Δ|, min cosine, NaN flags) and
the inputs an export is checked on.

`compare` treats any NaN or Inf on either side as a failure. `image_inputs` / `text_inputs` build
the fp32 graphs' checked batches: random pixels and rendered shapes scenes (real images when
calibration data is given) at batch 1 and the maximum batch; texts of several lengths, real
sentences and random ids. `real_images` / `sentences` are the real part alone: what the int8
graphs are judged on, at export and again where they are served (BUNDLE/reference.npz).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from train.data.augment import eval_view
from train.data.shapes import render, scene
from train.data.tokenizer import TextEncoder

SENTENCES = [
    "a dog",
    "two children play football on a sunny beach",
    "a large red circle at the top left and a small blue square in the middle",
    "A man in a black jacket is riding a bicycle down a busy city street while people watch from a cafe .",
    "Tessera serves image and text embeddings over gRPC.",
]


@dataclass(frozen=True)
class Comparison:
    n: int
    max_abs_diff: float
    min_cosine: float
    finite: bool

    def passes(self, atol: float | None, min_cosine: float) -> bool:
        ok = self.finite and self.min_cosine >= min_cosine
        return ok and (atol is None or self.max_abs_diff <= atol)


def compare(got: np.ndarray, want: np.ndarray) -> Comparison:
    """Row-wise comparison of two (N, D) arrays."""
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    finite = bool(np.isfinite(got64).all() and np.isfinite(want64).all())
    if not finite:
        return Comparison(len(got), float("inf"), float("-inf"), False)
    diff = float(np.abs(got64 - want64).max())
    norms = np.linalg.norm(got64, axis=1) * np.linalg.norm(want64, axis=1)
    cosine = (got64 * want64).sum(axis=1) / np.maximum(norms, 1e-30)
    return Comparison(len(got), diff, float(cosine.min()), True)


def merge(parts: list[Comparison]) -> Comparison:
    return Comparison(
        sum(p.n for p in parts),
        max(p.max_abs_diff for p in parts),
        min(p.min_cosine for p in parts),
        all(p.finite for p in parts),
    )


def real_images(
    size_px: int, max_batch: int, real: list[Image.Image] | None = None
) -> tuple[str, np.ndarray]:
    """(what they are, uint8 NHWC batch) of real pictures: `real` (calibration images) where given,
    else rendered shapes scenes; at most max_batch of them."""
    scenes = real or [render(scene(0, "parity", i), size_px) for i in range(max_batch)]
    pictures = np.stack([np.asarray(eval_view(im, size_px), dtype=np.uint8) for im in scenes[:max_batch]])
    return "real images" if real else "rendered shapes", pictures


def sentences(text: TextEncoder) -> tuple[str, np.ndarray, np.ndarray]:
    """(description, input_ids, attention_mask) of SENTENCES in one batch, padded to the longest."""
    ids, mask = text.encode(SENTENCES)
    return f"{len(SENTENCES)} sentences padded to {ids.shape[1]}", ids.numpy(), mask.numpy()


def image_inputs(
    size_px: int, max_batch: int, real: list[Image.Image] | None = None
) -> list[tuple[str, np.ndarray]]:
    """(description, uint8 NHWC batch) pairs."""
    rng = np.random.default_rng(0)
    what, pictures = real_images(size_px, max_batch, real)
    return [
        ("random pixels, batch 1", rng.integers(0, 256, (1, size_px, size_px, 3), dtype=np.uint8)),
        (
            f"random pixels, batch {max_batch}",
            rng.integers(0, 256, (max_batch, size_px, size_px, 3), dtype=np.uint8),
        ),
        (f"{what}, batch 1", pictures[:1]),
        (f"{what}, batch {len(pictures)}", pictures),
    ]


def text_inputs(
    text: TextEncoder, vocab_size: int, max_batch: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(description, input_ids, attention_mask) at several lengths, int64."""
    out = []
    for sentence in SENTENCES:
        ids, mask = text.encode([sentence])
        out.append((f"sentence of {ids.shape[1]} tokens", ids.numpy(), mask.numpy()))
    out.append(sentences(text))  # padded to the longest: padding must not matter
    rng = random.Random(0)
    for length in sorted({2, max(2, text.max_len // 2), text.max_len}):
        ids_np = np.array([[rng.randrange(5, vocab_size) for _ in range(length)] for _ in range(max_batch)])
        mask_np = np.ones_like(ids_np)
        for row in range(max_batch):  # ragged lengths inside the batch
            mask_np[row, rng.randint(1, length) :] = 0
        ids_np[mask_np == 0] = text.pad_id
        out.append(
            (
                f"random ids, batch {max_batch}, length {length}",
                ids_np.astype(np.int64),
                mask_np.astype(np.int64),
            )
        )
    return out
