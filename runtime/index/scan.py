"""The scan kernel of the built-in index, and the threading policy it runs under.

    scores_into(out, vectors, query)   out[i] = vectors[i] · query, on the calling thread
    scores_many(vectors, queries)      (Q, n) for queries that arrived together: one BLAS sgemm
    pool.run(tasks)                    a scan's chunks, shared by the caller and idle helpers
    set_policy(threads)                the server's policy, applied once at start
    KERNEL                             "faiss" or "numpy": which kernel scores_into uses

Policy: no kernel call is split over threads. A matrix-vector product split statically over BLAS's
threads waits at its end for the slowest of them, and on a host whose cores are shared (ONNX
Runtime, gRPC, a neighbour) that wait, not the arithmetic, decides the latency. So BLAS runs on one
thread, and a large scan is cut into chunks of CHUNK_ROWS vectors that the searching thread and
any idle helper (a bounded pool) take in turn: a helper that starts late finds nothing left and is
not waited for, and a descheduled one delays only the chunk it holds. Concurrent searches each run
on one of the searcher's bounded threads (runtime/searcher.py), and queries that arrive together
are batched, so that one pass over the vectors serves them all.

Kernel: a single query is memory-bound, and FAISS's `fvec_inner_products_ny` (a SIMD loop, one
thread) streams the vectors close to the memory bandwidth, where numpy's BLAS gemv does not; it is
used where faiss-cpu is installed (the `search` extra), numpy's BLAS otherwise. A batch is
compute-bound: BLAS sgemm serves it, under the same one-thread policy. docs/decisions.md has the
measurements behind both choices.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# The kernel is chosen by what is installed; faiss itself is imported at the first scan, so a
# server that holds no built-in collection never pays its memory.
KERNEL = "faiss" if importlib.util.find_spec("faiss") is not None else "numpy"
_faiss: Any = None


def _load_faiss() -> Any:
    global _faiss
    if _faiss is None:
        import faiss

        faiss.omp_set_num_threads(1)  # the policy: no kernel call split over threads
        _faiss = faiss
    return _faiss


CHUNK_ROWS = 8192  # vectors per chunk of a shared scan: megabytes of work, well above the hand-off cost
MIN_SHARED_CHUNKS = 4  # a shorter scan runs alone: a helper preempted mid-chunk would cost more than it saves


class ScanPool:
    """`threads` - 1 helpers that take chunks of a scan beside the thread that asked for it."""

    def __init__(self, threads: int = 1) -> None:
        self.helpers = threads - 1
        self.pool = ThreadPoolExecutor(self.helpers, thread_name_prefix="scan") if self.helpers else None

    def run(self, tasks: Sequence[Callable[[], None]]) -> None:
        """Runs every task; returns when all are done."""
        if self.pool is None or len(tasks) < MIN_SHARED_CHUNKS:
            for task in tasks:
                task()
            return
        todo, lock = iter(tasks), threading.Lock()

        def drain() -> None:
            while True:
                with lock:
                    task = next(todo, None)
                if task is None:
                    return
                task()

        helping = [self.pool.submit(drain) for _ in range(min(self.helpers, len(tasks) - 1))]
        drain()
        for future in helping:
            if not future.cancel():  # one that never started is not waited for
                future.result()


pool = ScanPool(1)


def scores_into(out: np.ndarray, vectors: np.ndarray, query: np.ndarray) -> None:
    """out (n,) float32 = vectors (n, d) @ query (d,); all three C-contiguous float32."""
    n, d = vectors.shape
    if n == 0:
        return
    if KERNEL == "faiss":
        faiss = _faiss or _load_faiss()
        ptr = faiss.swig_ptr
        faiss.fvec_inner_products_ny(ptr(out), ptr(query), ptr(vectors), d, n)
    else:
        np.dot(vectors, query, out=out)


def scores_many(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(Q, n) = queries (Q, d) @ vectors (n, d)ᵀ."""
    return queries @ vectors.T


def set_policy(threads: int) -> None:
    """One BLAS thread in this process (FAISS's OpenMP gets one when it loads), and `threads` to
    share a scan."""
    global pool
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a base install has it; without it, BLAS keeps its own default
        log.warning("threadpoolctl is not installed: numpy's BLAS keeps its default threads")
    else:
        threadpool_limits(limits=1, user_api="blas")
    pool = ScanPool(threads)
