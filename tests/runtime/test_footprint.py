"""An engine call's working memory is measured and bounded (runtime/footprint.py): the memory per
item is read from the process's resident memory, a batch runs in calls that fit the budget, and a
batch's results come back in order whatever the split."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from runtime.bundle import load_bundle
from runtime.config import ServeConfig
from runtime.embedder import Embedder, Pixels
from runtime.engines import EngineSet
from runtime.footprint import items_per_call, memory_per_item, rss_bytes

MB = 1 << 20


def test_memory_per_item_is_the_resident_growth_per_item() -> None:
    kept: list[np.ndarray] = []

    def run(n: int) -> None:  # an engine whose working memory is 8 MB an item, kept like an arena
        kept.append(np.ones((n, 8 * MB), dtype=np.uint8))

    if rss_bytes() == 0:
        pytest.skip("no /proc here: resident memory cannot be read")
    per_item = memory_per_item(run, max_items=32)
    assert 8 * MB * 0.95 <= per_item <= 8 * MB * 4 / 3 * 1.05  # the first call's memory kept too: ≤ 4/3 high


@pytest.mark.parametrize(
    "per_item_mb, budget_mb, want", [(50, 128, 2), (0.2, 128, 32), (0, 128, 32), (500, 128, 1), (10, 0, 32)]
)
def test_items_per_call_fit_the_budget(per_item_mb: float, budget_mb: int, want: int) -> None:
    assert items_per_call(per_item_mb * MB, 32, budget_mb * MB) == want


class Recorder:
    """An engine that records the batch size of every call and embeds an image as its mean pixel."""

    name, precision, graph = "recorder", "fp32", "image_encoder.onnx"

    def __init__(self, dim: int, codes: int) -> None:
        self.dim, self.codes, self.calls = dim, codes, []

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = next(iter(feeds.values()))
        self.calls.append(len(x))
        mean = x.reshape(len(x), -1).mean(axis=1, keepdims=True).astype(np.float32)  # (n, 1)
        return [np.repeat(mean, self.dim, axis=1), np.zeros((len(x), self.codes), np.float32)]


def test_a_batch_runs_in_calls_of_at_most_the_measured_size_in_order(bundle: Path) -> None:
    b = load_bundle(bundle)
    m = b.manifest
    embedder = Embedder(b, ServeConfig(bundle=str(bundle), max_wait_ms=200))
    image, text = Recorder(m.embed_dim, m.codebook_size), Recorder(m.embed_dim, m.codebook_size)
    embedder.engines = EngineSet(image, text, {"image": 3, "text": 32})
    size = m.image.size_px

    async def embed() -> np.ndarray:
        embedder.start()
        items = [Pixels(size, size, bytes([i]) * (size * size * 3)) for i in range(10)]
        out = await embedder.embed(items, None)
        await embedder.close()
        return out.embeddings

    vectors = asyncio.run(embed())
    assert image.calls == [3, 3, 3, 1]
    assert vectors[:, 0].tolist() == [float(i) for i in range(10)]  # each item's own result, in order
