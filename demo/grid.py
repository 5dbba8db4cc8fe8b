"""The demo's picture: one row per text query, the query written on the left, its top retrieved
images to the right with their scores; a green frame where the image holds every described shape,
an amber one where it holds the described colours and kinds (not all sizes or places)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CELL_PX = 128
TEXT_PX = 300
PAD_PX = 8
BG = (250, 250, 250)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


FRAMES = {2: (30, 170, 60), 1: (230, 160, 20)}


def draw_grid(rows: list[tuple[str, list[tuple[Image.Image, float, int]]]], path: Path) -> None:
    """rows: (query, [(image, score, match level 0-2)]) -> a PNG at path."""
    n_cols = max(len(hits) for _, hits in rows)
    width = TEXT_PX + n_cols * (CELL_PX + PAD_PX) + PAD_PX
    height = len(rows) * (CELL_PX + 24 + PAD_PX) + PAD_PX + 30
    canvas = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(canvas)
    title = (
        "Tessera demo: text query -> top 5 images (exact search). "
        "Green: holds every described shape; amber: its colours and kinds"
    )
    draw.text((PAD_PX, 6), title, fill=(20, 20, 20), font=_font(15))
    font, small = _font(15), _font(13)
    for r, (query, hits) in enumerate(rows):
        top = 30 + PAD_PX + r * (CELL_PX + 24 + PAD_PX)
        for line_no, line in enumerate(textwrap.wrap(query, 34)[:6]):
            draw.text((PAD_PX, top + 6 + 19 * line_no), line, fill=(20, 20, 20), font=font)
        for c, (image, score, level) in enumerate(hits):
            left = TEXT_PX + c * (CELL_PX + PAD_PX)
            canvas.paste(
                image.convert("RGB").resize((CELL_PX, CELL_PX), Image.Resampling.NEAREST), (left, top)
            )
            if level in FRAMES:
                box = (left - 3, top - 3, left + CELL_PX + 2, top + CELL_PX + 2)
                draw.rectangle(box, outline=FRAMES[level], width=3)
            draw.text((left, top + CELL_PX + 4), f"#{c + 1}  {score:.3f}", fill=(60, 60, 60), font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
