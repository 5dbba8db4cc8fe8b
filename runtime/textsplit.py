"""Length-aware splitting of a text batch: padding to the batch's longest caption wastes compute
wherever the engine's cost grows with the tokens it is given (ONNX Runtime on a CPU), so a batch is
run as a few calls over rows of similar length when that costs less than the padding it saves.

The cost of one engine call on (n, L) token ids is modelled as `call + n · L` token-times:
`call` is the engine's fixed cost per call in units of one token's compute, measured once at start
(`measure_call_tokens`). On a GPU a batch costs about what one row does, `call` is huge, and
batches stay whole; on a CPU (MiniLM-L6, 2 cores) it is ~30 tokens and a batch of 32 Flickr8k
captions is split into a few calls (docs/benchmarks.md).

    groups = split_by_length([12, 30, 11, 13], call_tokens=20.0)   # [[2, 0, 3], [1]]
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


def split_by_length(lengths: Sequence[int], call_tokens: float) -> list[list[int]]:
    """Row indices grouped into engine calls of minimum modelled cost, shortest rows first.

    Exact: the optimal groups are runs of the rows sorted by length, cut only between distinct
    lengths, so a dynamic programme over the k ≤ max_len distinct lengths finds them in O(k²).
    """
    if len(lengths) < 2 or math.isinf(call_tokens):
        return [list(range(len(lengths)))] if lengths else []
    order = sorted(range(len(lengths)), key=lengths.__getitem__)  # row indices, shortest first
    widths = sorted(set(lengths))  # the k distinct lengths
    counts = collections.Counter(lengths)
    ends = list(itertools.accumulate(counts[w] for w in widths))  # rows of widths[0..j]
    best = [0.0] + [math.inf] * len(widths)  # best[j]: cost of the rows of the j shortest widths
    cut = [0] * (len(widths) + 1)
    for j in range(1, len(widths) + 1):
        for i in range(j):  # one call on the rows of widths i..j-1, padded to widths[j-1]
            rows = ends[j - 1] - (ends[i - 1] if i else 0)
            cost = best[i] + call_tokens + rows * widths[j - 1]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups: list[list[int]] = []
    j = len(widths)
    while j > 0:
        i = cut[j]
        groups.append(order[(ends[i - 1] if i else 0) : ends[j - 1]])
        j = i
    return groups[::-1]


def measure_call_tokens(
    run: Callable[[int, int], object],
    max_batch: int,
    max_len: int,
    repeats: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """The engine's per-call cost in token-times, from the medians of `run(1, L)` and `run(B, L)`.

    `run(n, length)` runs the engine once on n rows of `length` tokens. Returns math.inf where a
    full batch costs no more per token than one row (nothing to gain from splitting), and 0 where
    the measurement says calls are free (split freely).
    """

    def median_s(n: int) -> float:
        times = []
        for _ in range(repeats):
            t0 = clock()
            run(n, max_len)
            times.append(clock() - t0)
        return statistics.median(times)

    one_s, full_s = median_s(1), median_s(max_batch)
    extra_tokens = (max_batch - 1) * max_len
    if extra_tokens <= 0 or full_s <= one_s:
        return math.inf
    token_s = (full_s - one_s) / extra_tokens
    return max(0.0, one_s / token_s - max_len)


def text_probe(run_feeds: Callable[[dict[str, np.ndarray]], object]) -> Callable[[int, int], object]:
    """`run(n, length)` for `measure_call_tokens`: a text engine's feeds of n rows of `length` ids."""

    def run(n: int, length: int) -> object:
        ids = np.ones((n, length), dtype=np.int64)  # (n, L)
        return run_feeds({"input_ids": ids, "attention_mask": np.ones_like(ids)})

    return run


class CallCost:
    """`measure_call_tokens` for whichever engine serves now, measured once per engine `name()`:
    an engine hot-swapped in (TensorRT replacing ONNX Runtime, runtime/tensorrt.py) is measured on
    its first batch, on the engine thread."""

    def __init__(
        self, name: Callable[[], str], run: Callable[[int, int], object], max_batch: int, max_len: int
    ) -> None:
        self.name, self.run, self.max_batch, self.max_len = name, run, max_batch, max_len
        self.by_engine: dict[str, float] = {}

    def call_tokens(self) -> float:
        name = self.name()
        if name not in self.by_engine:
            self.by_engine[name] = measure_call_tokens(self.run, self.max_batch, self.max_len)
            log.info("text engine %s: one call costs %.1f tokens' compute", name, self.by_engine[name])
        return self.by_engine[name]
