"""Dynamic batching (docs/architecture.md §5, the batching contract), after Ray Serve's `@serve.batch` and
text-embeddings-inference's queue: a list in, a list of the same length out.

One `Batcher` owns one engine's queue. `submit(items, deadline_s)` enqueues the items of one request
and awaits their results; one task cuts batches and runs each on the batcher's worker thread:

- a batch is cut when it is full (max_batch_size items, or the next item would pass the padded
  token budget) or when its oldest item has waited max_wait_ms. The wait counts from enqueue, so
  time spent behind a busy engine counts, and a queue that filled meanwhile is cut at once;
- with a cost (text: tokens) and `lookahead` > 1, a full batch is drawn by cost from the oldest
  `lookahead` batches' worth of the queue rather than taken in arrival order (`by_cost`): the
  batch holds the oldest item and the items nearest it in length, so it is padded little. An item
  passed over `lookahead` times makes the cuts take arrival order until it is served: once among
  them, an item waits at most `lookahead` passes and then as many cuts in arrival order;
- pending items (queued, or in a batch not yet started) are bounded by max_queue: a request that
  does not fit is refused whole with `Overloaded` (RESOURCE_EXHAUSTED), never queued unbounded;
- items whose request was cancelled or whose deadline passed are dropped when the batch is cut,
  before they cost compute;
- an exception from the engine fails every item of that batch and nothing else;
- one batch at a time per engine runs off the event loop (ONNX Runtime and TensorRT release the
  GIL), so decoding and tokenising of later requests overlap inference.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from runtime.errors import EngineFailure, Expired, Overloaded, Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class BatchObserver(Protocol):
    def batch(self, size: int, padded_cost: int, inference_s: float) -> None: ...
    def dropped(self, reason: str, n: int) -> None: ...
    def depth(self, n: int) -> None: ...


@dataclass
class _Pending(Generic[T]):
    item: T
    future: asyncio.Future[Any]
    enqueued_s: float  # loop.time()
    deadline_s: float | None  # loop.time() after which the item is not worth computing
    cost: int  # e.g. tokens; the batch's padded cost is size * the largest cost
    passes: int = 0  # batches cut by cost from the queue around it without it


def by_cost(costs: Sequence[int], max_size: int, max_cost: int = 0) -> list[int]:
    """Positions in `costs` (oldest first) of the batch to run next: the costs sorted and cut into
    batches of at most `max_size` items and `max_cost` padded cost (0: no budget), and the one that
    holds the oldest, position 0. Where that is the last, short one, it takes the next shorter items
    too: a batch drawn from a queue that holds a full one is full.

        by_cost([9, 3, 9, 4, 3, 8], max_size=3)   # [5, 0, 2]: the oldest with the two nearest it
    """

    def fits(n: int, widest: int) -> bool:
        return n <= max_size and not (max_cost and n > 1 and n * widest > max_cost)

    order = sorted(range(len(costs)), key=lambda i: (costs[i], i))
    batch: list[int] = []
    for i in order:
        if not fits(len(batch) + 1, costs[i]):
            if 0 in batch:
                return batch
            batch = []
        batch.append(i)
    shorter = len(order) - len(batch)  # the batch is order[shorter:]
    while shorter > 0 and fits(len(batch) + 1, costs[batch[-1]]):
        shorter -= 1
        batch.insert(0, order[shorter])
    return batch


def plan(costs: Sequence[int], max_size: int, max_cost: int = 0, lookahead: int = 1) -> list[list[int]]:
    """The batches a Batcher cuts from a queue of `costs` that is full from the start (a saturated
    server), as positions in `costs`: what a benchmark feeds an engine to match the server."""
    queue = collections.deque(_Pending(i, None, 0.0, None, c) for i, c in enumerate(costs))  # type: ignore[arg-type]
    batches = []
    while queue:
        n, full = _fit(queue, max_size, max_cost)
        batches.append([e.item for e in _take(queue, n, full, max_size, max_cost, lookahead)])
    return batches


@dataclass(frozen=True)
class Result(Generic[R]):
    value: R
    queue_ms: float  # enqueue -> batch start
    inference_ms: float  # the engine call of its batch
    batch_size: int


class Batcher(Generic[T, R]):
    def __init__(
        self,
        name: str,
        run: Callable[[list[T]], list[R]],  # blocking engine call, a list in, a list out
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        cost: Callable[[T], int] | None = None,
        max_batch_cost: int = 0,  # padded cost budget per batch, 0 = no budget
        lookahead: int = 1,  # batches' worth of the queue a batch is drawn from by cost; 1 = arrival order
        observer: BatchObserver | None = None,
    ) -> None:
        self.name, self.run_batch = name, run
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_ms / 1000, max_queue
        self.cost, self.max_batch_cost, self.observer = cost, max_batch_cost, observer
        self.lookahead = lookahead if cost is not None else 1
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{name}")
        self.queue: collections.deque[_Pending[T]] = collections.deque()
        self.pending = 0  # queued + cut but not yet started
        self.wakeup = asyncio.Event()
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def submit(self, items: Sequence[T], deadline_s: float | None = None) -> list[Result[R]]:
        """Results of `items`, in order. deadline_s is an absolute `loop.time()`."""
        if self.closed:
            raise Unavailable(f"{self.name} batcher is shut down")
        if self.pending + len(items) > self.max_queue:
            if self.observer:
                self.observer.dropped("queue_full", len(items))
            raise Overloaded(
                f"{self.name} queue is full ({self.pending} of {self.max_queue} items pending); retry later"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        entries = [
            _Pending(item, loop.create_future(), now, deadline_s, self.cost(item) if self.cost else 1)
            for item in items
        ]
        self.queue.extend(entries)
        self.pending += len(entries)
        self._depth()
        self.wakeup.set()
        if len(entries) == 1:  # most requests: no gather (cancelling the caller cancels the future)
            return [await entries[0].future]
        outcomes = await asyncio.gather(*(e.future for e in entries), return_exceptions=True)
        for outcome in outcomes:  # every future is retrieved, the first error is raised
            if isinstance(outcome, BaseException):
                raise outcome
        return list(outcomes)

    async def close(self) -> None:
        """Finishes what is queued, then stops the loop and the worker thread."""
        self.closed = True
        self.wakeup.set()
        if self.task is not None:
            await self.task
        self.executor.shutdown(wait=True)

    # -- the loop ---------------------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._cut(loop)
            if batch is None:
                return
            await self._run(loop, batch)  # one batch at a time on this engine

    async def _cut(self, loop: asyncio.AbstractEventLoop) -> list[_Pending[T]] | None:
        while True:
            self._drop_dead(loop.time())
            timeout: float | None = None
            if self.queue:
                n, full = _fit(self.queue, self.max_batch_size, self.max_batch_cost)
                waited_s = loop.time() - self.queue[0].enqueued_s
                if full or waited_s >= self.max_wait_s or self.closed:
                    batch = _take(self.queue, n, full, self.max_batch_size, self.max_batch_cost,
                                  self.lookahead)  # fmt: skip
                    self.pending -= len(batch)
                    self._depth()
                    return batch
                timeout = self.max_wait_s - waited_s
            elif self.closed:
                return None
            self.wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), timeout)

    def _drop_dead(self, now_s: float) -> None:
        """Removes cancelled and expired items (anywhere in the queue) before they cost compute."""
        if not any(_dead(e, now_s) for e in self.queue):
            return
        keep: collections.deque[_Pending[T]] = collections.deque()
        expired = cancelled = 0
        for e in self.queue:
            if e.future.done():  # cancelled by its request
                cancelled += 1
            elif e.deadline_s is not None and now_s >= e.deadline_s:
                waited_ms = 1e3 * (now_s - e.enqueued_s)
                e.future.set_exception(
                    Expired(f"deadline passed after {waited_ms:.0f} ms in the {self.name} queue")
                )
                expired += 1
            else:
                keep.append(e)
        self.queue = keep
        self.pending -= expired + cancelled
        self._depth()
        if self.observer:
            if expired:
                self.observer.dropped("deadline", expired)
            if cancelled:
                self.observer.dropped("cancelled", cancelled)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending[T]]) -> None:
        start_s = loop.time()
        t0 = time.perf_counter()
        try:
            values = await loop.run_in_executor(self.executor, self.run_batch, [e.item for e in batch])
            if len(values) != len(batch):
                raise RuntimeError(f"engine returned {len(values)} results for {len(batch)} items")
        except Exception as e:  # the engine failed this batch: fail its items, keep serving
            log.exception("%s engine failed on a batch of %d", self.name, len(batch))
            error = EngineFailure(f"{self.name} engine failed on a batch of {len(batch)}: {e}")
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(error)
            return
        inference_s = time.perf_counter() - t0
        if self.observer:
            self.observer.batch(len(batch), len(batch) * max(e.cost for e in batch), inference_s)
        for entry, value in zip(batch, values, strict=True):
            if not entry.future.done():  # a request cancelled mid-batch just loses its result
                queue_ms = 1e3 * (start_s - entry.enqueued_s)
                entry.future.set_result(Result(value, queue_ms, 1e3 * inference_s, len(batch)))

    def _depth(self) -> None:
        if self.observer:
            self.observer.depth(self.pending)


def _fit(queue: Iterable[_Pending[Any]], max_size: int, max_cost: int) -> tuple[int, bool]:
    """How many items from the front of `queue` make the next batch, and whether it is full."""
    n, widest = 0, 0
    for entry in queue:
        if n == max_size:
            return n, True
        widest_if = max(widest, entry.cost)
        if max_cost and n > 0 and (n + 1) * widest_if > max_cost:
            return n, True
        n, widest = n + 1, widest_if
    return n, n == max_size


def _take(
    queue: collections.deque[_Pending[T]], n: int, full: bool, max_size: int, max_cost: int, lookahead: int
) -> list[_Pending[T]]:
    """Takes the next batch off `queue`: its `n` oldest (`_fit`), or where it holds more than a full
    batch, the batch `by_cost` draws from its oldest `lookahead` batches' worth; those passed over
    count it, and once one has been passed over `lookahead` times it is due: arrival order again."""
    if not full or lookahead <= 1 or len(queue) <= n:
        return [queue.popleft() for _ in range(n)]
    window = [queue.popleft() for _ in range(min(len(queue), lookahead * max_size))]
    if any(e.passes >= lookahead for e in window):
        picks = set(range(n))
    else:
        picks = set(by_cost([e.cost for e in window], max_size, max_cost))
    rest = [e for k, e in enumerate(window) if k not in picks]
    for e in rest:
        e.passes += 1
    queue.extendleft(reversed(rest))
    return [window[k] for k in sorted(picks)]


def _dead(entry: _Pending[Any], now_s: float) -> bool:
    return entry.future.done() or (entry.deadline_s is not None and now_s >= entry.deadline_s)
