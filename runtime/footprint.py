"""The process's memory, and how many items one engine call may take.

ONNX Runtime's CPU arena grows to the largest call a session has run and keeps that memory for
the life of the session: warming up at the largest batch, or serving one, pins the activations of
that batch for good. On CPUs a batch buys little past a few items for convolutional towers (their
cost per image is flat), while their activations grow with every image. So each engine's working
memory per item is measured at start — the growth of the process's resident memory from a call on
one item to a call on a few — and a batch runs in calls of at most `items_per_call` items, so
that one call stays within the `--engine-memory-mb` budget. A tower whose items cost little memory
(a text encoder, a GPU engine whose activations live on the device) keeps whole batches.

    per_item = memory_per_item(lambda n: engine.run(feed(n)))   # bytes of resident memory per item
    items_per_call(per_item, max_batch=32, budget_bytes=256 << 20)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)
PROBE_ITEMS = 4  # the second probe call's items: enough to see the growth, cheap to run
M_MMAP_THRESHOLD = -3  # glibc mallopt parameters
M_ARENA_MAX = -8


def rss_bytes() -> int:
    """Resident memory of this process (Linux; 0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def memory_per_item(run: Callable[[int], object], max_items: int) -> float:
    """Bytes of resident memory one more item in a call costs, from calls on 1 and PROBE_ITEMS.
    An arena that keeps the first call's chunk beside the second's makes this high by up to
    PROBE_ITEMS / (PROBE_ITEMS - 1): calls come out smaller, never bigger, than the budget allows."""
    run(1)
    one = rss_bytes()
    n = min(PROBE_ITEMS, max_items)
    if n < 2:
        return 0.0
    run(n)
    return max(0.0, (rss_bytes() - one) / (n - 1))


def items_per_call(per_item_bytes: float, max_items: int, budget_bytes: int) -> int:
    """The most items one call may take so that its working memory fits the budget (≥ 1)."""
    if per_item_bytes <= 0 or budget_bytes <= 0:
        return max_items
    return max(1, min(max_items, int(budget_bytes // per_item_bytes)))


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return (
            libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
        )
    except OSError:
        return None


def return_freed_memory_to_the_os() -> None:
    """Large buffers (request bytes, decoded images, batches) are freed back to the OS as they go:
    glibc otherwise raises its mmap threshold after the first large free and serves later large
    blocks from heaps that never shrink, and grows one heap per thread. No-op off glibc."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
        libc.mallopt(M_ARENA_MAX, 2)


def trim() -> None:
    """Gives the free pages inside glibc's heaps back to the OS (what a burst of requests left
    behind); cheap when there is nothing to give. No-op off glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
