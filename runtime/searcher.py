"""Searches of the collections on a bounded pool of threads, batched where they arrive together.

    searcher = Searcher(threads=2)
    hits, scored = await searcher.search(collection, query, top_k, nprobe, code_scores, where)
    results = await searcher.search_many(collection, [(query, top_k, nprobe, code_scores, where), ...])
    searcher.close()

At most `threads` scans run at once, each on one thread (runtime/index/scan.py has the policy). A
search that arrives while every thread is busy waits with the others of its collection, and the
next free thread takes them together, up to MAX_BATCH, in one call: an exact batch reads the
vectors once for all of them. So an idle server answers a query at once, and a loaded one
amortises its reads instead of queueing scans behind each other. Collections take turns.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from runtime.index.base import Collection, Hit, Results
from runtime.index.filters import MATCH_ALL, Filter

MAX_BATCH = 64  # queries one call scores together


@dataclass
class _Waiting:
    query: np.ndarray  # (d,) unit
    top_k: int
    nprobe: int
    code_scores: np.ndarray  # (K,)
    where: Filter
    answer: asyncio.Future[tuple[list[Hit], int]]


class Searcher:
    def __init__(self, threads: int = 0) -> None:
        self.threads = threads or os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="search")
        self.busy = 0
        self.waiting: dict[int, tuple[Collection, list[_Waiting]]] = {}  # id(collection) -> its queue
        self.tasks: set[asyncio.Task[None]] = set()

    async def search(
        self, collection: Collection, query: np.ndarray, top_k: int, nprobe: int, code_scores: np.ndarray,
        where: Filter = MATCH_ALL,
    ) -> tuple[list[Hit], int]:  # fmt: skip
        answer: asyncio.Future[tuple[list[Hit], int]] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(id(collection), (collection, []))[1].append(
            _Waiting(query, top_k, nprobe, code_scores, where, answer)
        )
        self._dispatch()
        return await answer

    async def search_many(
        self, collection: Collection, queries: list[tuple[np.ndarray, int, int, np.ndarray, Filter]]
    ) -> Results:
        """Queries (query, top_k, nprobe, code_scores, where) of one request: queued together, so
        one thread takes them in one call (up to MAX_BATCH at a time)."""
        loop = asyncio.get_running_loop()
        waiting = [
            _Waiting(q, k, nprobe, s, where, loop.create_future()) for q, k, nprobe, s, where in queries
        ]
        self.waiting.setdefault(id(collection), (collection, []))[1].extend(waiting)
        self._dispatch()
        return list(await asyncio.gather(*(w.answer for w in waiting)))

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def _dispatch(self) -> None:
        while self.busy < self.threads and self.waiting:
            key = next(iter(self.waiting))
            collection, queue = self.waiting.pop(key)
            batch = [w for w in queue[:MAX_BATCH] if not w.answer.done()]  # a cancelled caller is skipped
            if queue[MAX_BATCH:]:
                self.waiting[key] = (collection, queue[MAX_BATCH:])  # to the back: collections take turns
            if batch:
                self.busy += 1
                task = asyncio.ensure_future(self._run(collection, batch))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _run(self, collection: Collection, batch: list[_Waiting]) -> None:
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.pool, _search, collection, batch)
        except Exception as e:  # the collection was dropped, above all: every caller hears it
            for w in batch:
                if not w.answer.done():
                    w.answer.set_exception(e)
        else:
            for w, result in zip(batch, results, strict=True):
                if not w.answer.done():
                    w.answer.set_result(result)
        finally:
            self.busy -= 1
            self._dispatch()


def _search(collection: Collection, batch: list[_Waiting]) -> Results:
    """One call per (nprobe, filter) among the batch (exact unfiltered queries together), at the
    group's largest top_k."""
    out: list[tuple[list[Hit], int]] = [([], 0)] * len(batch)
    for nprobe, where in dict.fromkeys((w.nprobe, w.where) for w in batch):
        members = [i for i, w in enumerate(batch) if w.nprobe == nprobe and w.where == where]
        queries = np.stack([batch[i].query for i in members])  # (Q, d)
        scores = np.stack([batch[i].code_scores for i in members])  # (Q, K)
        top_k = max(batch[i].top_k for i in members)
        for i, (hits, scored) in zip(
            members, collection.search(queries, top_k, nprobe, scores, where), strict=True
        ):
            out[i] = (hits[: batch[i].top_k], scored)
    return out
