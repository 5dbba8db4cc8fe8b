"""Length-aware text batches (runtime/textsplit.py): the split is the cheapest under its cost model
(checked against brute force over every partition), the per-call cost is measured as modelled,
and a split batch embeds exactly as unpadded single rows do (real ONNX Runtime, the tiny bundle)."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest

from runtime.bundle import load_bundle
from runtime.config import ServeConfig
from runtime.embedder import Embedder, Text
from runtime.textsplit import measure_call_tokens, split_by_length
from tests.runtime.test_server import reference_text


def modelled_cost(lengths: list[int], groups: list[list[int]], call_tokens: float) -> float:
    return sum(call_tokens + len(g) * max(lengths[i] for i in g) for g in groups)


def cheapest_by_brute_force(lengths: list[int], call_tokens: float) -> float:
    """Every partition of the rows into groups (set partitions, not only runs of the sorted rows)."""

    def partitions(items: list[int]) -> list[list[list[int]]]:
        if not items:
            return [[]]
        first, rest = items[0], items[1:]
        out = []
        for p in partitions(rest):
            out.append([[first], *p])
            for k in range(len(p)):
                out.append([*p[:k], [first, *p[k]], *p[k + 1 :]])
        return out

    return min(modelled_cost(lengths, p, call_tokens) for p in partitions(list(range(len(lengths)))))


@pytest.mark.parametrize("seed", range(12))
def test_split_is_the_cheapest_partition(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(2, 32) for _ in range(rng.randint(1, 8))]
    call_tokens = rng.choice([0.0, 3.0, 20.0, 100.0])
    groups = split_by_length(lengths, call_tokens)
    assert sorted(itertools.chain(*groups)) == list(range(len(lengths)))  # every row once
    cheapest = cheapest_by_brute_force(lengths, call_tokens)
    assert modelled_cost(lengths, groups, call_tokens) == pytest.approx(cheapest)


def test_split_extremes() -> None:
    lengths = [12, 30, 11, 13, 12]
    assert split_by_length(lengths, math.inf) == [[0, 1, 2, 3, 4]]  # calls too dear: one batch
    assert split_by_length(lengths, 1e6) == [[2, 0, 4, 3, 1]]  # shortest first
    assert split_by_length(lengths, 0.0) == [[2], [0, 4], [3], [1]]  # calls free: one per length
    assert split_by_length(lengths, 20.0) == [[2, 0, 4, 3], [1]]  # only the outlier pays its own call
    assert split_by_length([], 5.0) == []


def test_call_cost_is_measured_as_modelled() -> None:
    """An engine costing 2 ms + 0.1 ms per padded token (on a fake clock) costs 20 tokens a call."""
    now = [0.0]

    def engine(n: int, length: int) -> None:
        now[0] += 2e-3 + 1e-4 * n * length

    assert measure_call_tokens(engine, 32, 16, clock=lambda: now[0]) == pytest.approx(20.0)

    def flat(n: int, length: int) -> None:  # a GPU-like engine: a batch costs what one row does
        now[0] += 1e-3

    assert measure_call_tokens(flat, 32, 16, clock=lambda: now[0]) == math.inf


def test_split_batches_embed_as_single_rows(bundle: Path) -> None:
    texts = ["x", "two green triangles", "A red circle above a small blue square.", "big " * 30, "a b"]
    want, scores = reference_text(bundle, texts)  # each text alone, unpadded

    async def embed(whole: bool, call_tokens: float | None) -> tuple[np.ndarray, np.ndarray, int]:
        embedder = Embedder(load_bundle(bundle), ServeConfig(bundle=str(bundle), whole_text_batches=whole))
        embedder.load()
        assert embedder.engines is not None
        if call_tokens is not None:
            assert embedder.text_cost is not None
            embedder.text_cost.by_engine[embedder.engines.text.name] = call_tokens  # pin the measured cost
        calls = 0
        engine_run = embedder.engines.text.run

        def counting_run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            nonlocal calls
            calls += 1
            return engine_run(feeds)

        embedder.engines.text.run = counting_run  # type: ignore[method-assign]
        embedder.start()
        out = await embedder.embed([Text(t) for t in texts], None)
        await embedder.close()
        return out.embeddings, out.code_scores, calls

    split, split_scores, split_calls = asyncio.run(embed(False, 0.0))
    whole, whole_scores, whole_calls = asyncio.run(embed(True, None))
    assert (split_calls, whole_calls) == (len(texts), 1)  # five lengths, five calls; or one
    for got, got_scores in ((split, split_scores), (whole, whole_scores)):
        assert np.abs(got - want).max() <= 1e-6
        assert np.abs(got_scores - scores).max() <= 1e-5
