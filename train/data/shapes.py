"""The synthetic "shapes" dataset: images of one to three coloured shapes, generated from a seed.

Each image places 1-3 shapes (4 kinds x 8 colours x 3 sizes) in distinct cells of a 3 x 3 grid,
and its captions state every attribute of every shape ("a large red circle at the top left and a
small blue square in the middle"), worded differently per caption. With ~10⁵ single-shape and
~10¹⁰ three-shape scenes, a caption rarely fits another image. Nothing is stored: sample i of a
split is a pure function of (seed, split, i), so tests, the demo and DDP ranks agree.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "cyan": (40, 200, 210),
}
KINDS = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 0.16, "medium": 0.23, "large": 0.30}  # side as a fraction of the image
CELLS = (
    "top left", "top", "top right",
    "left", "middle", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
COUNT_WEIGHTS = (0.15, 0.35, 0.5)  # P(1, 2, 3 shapes)
BACKGROUND = (30, 30, 30)


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    cell: int  # index into CELLS


def scene(seed: int, split: str, index: int) -> list[Shape]:
    """The shapes of image `index` of `split` (deterministic)."""
    rng = random.Random(f"shapes/{seed}/{split}/{index}")
    count = rng.choices((1, 2, 3), weights=COUNT_WEIGHTS)[0]
    cells = rng.sample(range(len(CELLS)), count)
    return [Shape(rng.choice(KINDS), rng.choice(list(COLOURS)), rng.choice(list(SIZES)), c) for c in cells]


def render(shapes: list[Shape], size_px: int) -> Image.Image:
    """Draws the scene on a dark background (RGB, size_px x size_px), antialiased by 4x supersampling."""
    scale = 4
    side = size_px * scale
    img = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(img)
    cell = side / 3
    for s in shapes:
        cx = (s.cell % 3 + 0.5) * cell
        cy = (s.cell // 3 + 0.5) * cell
        r = SIZES[s.size] * side / 2
        colour = COLOURS[s.colour]
        if s.kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif s.kind == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif s.kind == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    return img.resize((size_px, size_px), Image.Resampling.LANCZOS)


def phrase(s: Shape, style: int) -> str:
    where = CELLS[s.cell]
    at = "in the middle" if where == "middle" else f"at the {where}"
    if style == 0:
        return f"a {s.size} {s.colour} {s.kind} {at}"
    if style == 1:
        return f"{at} a {s.size} {s.colour} {s.kind}"
    return f"a {s.colour} {s.kind} of {s.size} size {at}"


def captions(shapes: list[Shape], n: int, seed: str) -> list[str]:
    """n differently worded captions that each state every attribute of every shape."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        order = sorted(shapes, key=lambda s: s.cell) if k == 0 else rng.sample(shapes, len(shapes))
        parts = [phrase(s, (k + i) % 3) for i, s in enumerate(order)]
        text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        out.append(text)
    return out


def shapes_split(seed: int, split: str, n_images: int, n_captions: int) -> list[tuple[int, list[str]]]:
    """[(index, captions)] for the first n_images images of a split."""
    return [
        (i, captions(scene(seed, split, i), n_captions, f"captions/{seed}/{split}/{i}"))
        for i in range(n_images)
    ]
