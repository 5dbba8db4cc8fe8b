"""Caption data: the JSONL format, TCL's caption clean-up, and the evaluation split layout.

JSONL, one image per line (paths relative to an image root):

    {"image": "dogs/1.jpg", "caption": "a dog"}                      one caption
    {"image": "dogs/2.jpg", "captions": ["a dog", "two dogs"], "split": "train"}

Every caption of an image is a training pair carrying the image's id, so captions of one image
are positives of one another in the queues. Lines without "split" belong to every split asked for
only if the file has no "split" keys at all (then the caller's train/val split cannot be told
apart: `load_jsonl` raises).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

_PUNCT = re.compile(r"([,.'!?\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")


def clean_caption(caption: str, max_words: int) -> str:
    """TCL's `pre_caption`: lowercase, strip punctuation, split - and /, cap the word count."""
    text = _PUNCT.sub("", caption.lower()).replace("-", " ").replace("/", " ")
    text = _SPACES.sub(" ", text).strip()
    words = text.split(" ")
    return " ".join(words[:max_words])


@dataclass(frozen=True)
class ImageCaptions:
    image: str  # path relative to the image root (or a shapes index as text)
    captions: tuple[str, ...]


def load_jsonl(
    path: str | Path, split: str | None, max_words: int, held_out: frozenset[str] = frozenset(),
    held_out_split: str = "test", clean: bool = True,
) -> list[ImageCaptions]:  # fmt: skip
    """The images of `split` (all when None), captions cleaned (or only stripped, `clean=False`:
    raw text for a CLIP-family tokenizer); bad lines are named. Images named in `held_out` belong
    to `held_out_split` whatever their line says (a split carved out of another). `split` may join
    several with "+" ("train+dev")."""
    wanted = split_names(split) if split is not None else None
    out: list[ImageCaptions] = []
    path = Path(path)
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                image = row["image"]
                caps = row["captions"] if "captions" in row else [row["caption"]]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: not an image-caption record ({e})") from e
            row_split = held_out_split if str(image) in held_out else row.get("split")
            if wanted is not None and row_split is not None and row_split not in wanted:
                continue
            kept = (clean_caption(str(c), max_words) if clean else str(c).strip() for c in caps)
            cleaned = tuple(c for c in kept if c)
            if cleaned:
                out.append(ImageCaptions(str(image), cleaned))
    if not out:
        raise ValueError(f"{path}: no images in split {split!r}")
    return out


def split_names(split: str) -> frozenset[str]:
    """The splits a split setting names: one, or several joined by "+" ("train+dev": a refit on
    the training data and the split that chose the recipe)."""
    return frozenset(s.strip() for s in split.split("+"))


def refit_includes(train_split: str, split: str) -> bool:
    """Whether `split` is one of several splits joined into the training data (a refit,
    "train+dev"), so that recalls measured on it can choose nothing. A single split evaluated on
    itself (small data with no dev split) is the user's stated choice and is left alone."""
    names = split_names(train_split)
    return len(names) > 1 and split in names


def read_held_out(path: str | Path) -> frozenset[str]:
    """Image names, one a line (# comments), from `path`: as given, else under the repository (the
    shipped lists live in train/splits/)."""
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = Path(__file__).resolve().parents[2] / p
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"data.held_out {path}: {e.strerror or e}") from e
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


@dataclass(frozen=True)
class RetrievalSet:
    """An evaluation split: images, all their captions, and which image each caption belongs to."""

    images: list[str]
    captions: list[str]
    caption_image: list[int]  # caption j describes images[caption_image[j]]


def retrieval_set(items: list[ImageCaptions]) -> RetrievalSet:
    captions, owner = [], []
    for i, item in enumerate(items):
        captions.extend(item.captions)
        owner.extend([i] * len(item.captions))
    return RetrievalSet([it.image for it in items], captions, owner)
