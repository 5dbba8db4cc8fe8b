"""The built-in index at scale, in miniature: codes split into sub-lists (CELL_ROWS made small),
routed search over them, batched exact search, the scan kernels, and the read/write lock."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.index import builtin, scan
from runtime.index.builtin import BuiltinCollection, spherical_kmeans
from runtime.index.filters import MATCH_ALL, Filter
from runtime.index.rwlock import ReadWriteLock
from runtime.searcher import Searcher
from tests.runtime.test_index import D, K, brute_force, data, search, spec


@pytest.fixture
def small_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin, "CELL_ROWS", 16)


def test_a_growing_code_splits_and_every_record_stays_findable(tmp_path: Path, small_lists: None) -> None:
    ids, vectors, codes, payloads = data(1200)
    codes[:] = np.where(np.arange(1200) < 900, 3, codes)  # code 3 holds most of the records
    c = BuiltinCollection(spec(), tmp_path)
    for s in range(0, 1200, 100):  # in steps, so code 3 splits several times as it grows
        c.upsert(ids[s : s + 100], vectors[s : s + 100], codes[s : s + 100], payloads[s : s + 100])
    sizes = c.list_sizes()
    assert sizes.sum() == 1200 and len(sizes) > K  # code 3 is now many lists
    assert max(sizes) <= 2 * 16, "a list grew past twice its split size"
    assert all(c.lists[li].code == 3 for li in c.by_code[3])
    assert c.get(ids)["r5"][1] == payloads[5] and len(c.get(ids)) == 1200
    for q in data(4, seed=3)[1]:
        exact, scored = search(c, q, 10)
        assert scored == 1200 and [h.id for h in exact] == brute_force(vectors, ids, q, 10)
        every = c.search(q[None], 10, len(sizes), np.zeros((1, K), np.float32))[0]
        assert [h.id for h in every[0]] == [h.id for h in exact], "probing every list is exact search"
        assert [h.code for h in exact] == [int(codes[int(h.id[1:])]) for h in exact]
    c.delete(ids[:300])
    c.upsert(ids[300:310], vectors[:10], codes[:10], payloads[:10])  # moves records between codes
    c.close()
    again = BuiltinCollection(spec(), tmp_path)  # recovery splits again, from the codes alone
    assert again.count() == 900 and len(again.list_sizes()) > K
    assert np.array_equal(again.get(["r305"])["r305"][0], vectors[5])
    kept = list(range(310, 1200))
    q = data(1, seed=4)[1][0]
    live_ids = ids[300:310] + [ids[i] for i in kept]
    live = np.concatenate([vectors[:10], vectors[kept]])
    assert [h.id for h in search(again, q, 10)[0]] == brute_force(live, live_ids, q, 10)


def test_a_routed_query_scans_its_best_lists_only(tmp_path: Path, small_lists: None) -> None:
    """Its nprobe lists with the nearest centroids; a centroid is the mean of what its list holds."""
    ids, vectors, codes, payloads = data(800)
    codes[:] = 0
    c = BuiltinCollection(spec(), tmp_path)
    c.upsert(ids, vectors, codes, payloads)
    q = vectors[17]
    hits, scored = c.search(q[None], 5, 3, np.zeros((1, K), np.float32))[0]
    sub = c.by_code[0]
    best = sorted(sub, key=lambda li: -float(c.centroids[li] @ q))[:3]
    assert scored == sum(len(c.lists[li]) for li in best)
    inside = [i for li in best for i in c.lists[li].ids]
    assert hits[0].id == "r17" and "r17" in inside
    assert {h.id for h in hits} <= set(inside)


def test_batched_exact_search_equals_single_queries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin, "BLOCK_ROWS", 50)  # many blocks: the running top-k merges
    ids, vectors, codes, payloads = data(700)
    c = BuiltinCollection(spec(), tmp_path)
    c.upsert(ids, vectors, codes, payloads)
    queries = data(9, seed=5)[1]
    for top_k in (1, 10, 1000):
        batch = c.search(queries, top_k, 0, np.zeros((9, K), np.float32))
        for q, (hits, scored) in zip(queries, batch, strict=True):
            assert scored == 700
            assert [h.id for h in hits] == brute_force(vectors, ids, q, min(top_k, 700))
            assert [h.payload for h in hits[:3]] == [payloads[int(h.id[1:])] for h in hits[:3]]


@pytest.mark.parametrize("kernel", ["faiss", "numpy"])
def test_the_scan_kernels_equal_a_float64_loop(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if kernel == "faiss" and scan.KERNEL != "faiss":
        pytest.skip("faiss-cpu (the search extra) is not installed")
    monkeypatch.setattr(scan, "KERNEL", kernel)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(37, 24)).astype(np.float32)
    query = rng.normal(size=24).astype(np.float32)
    out = np.empty(37, dtype=np.float32)
    scan.scores_into(out, vectors, query)
    reference = [sum(float(a) * float(b) for a, b in zip(v, query, strict=True)) for v in vectors]
    assert np.allclose(out, reference, atol=1e-5)


def test_spherical_kmeans_finds_separated_clusters() -> None:
    rng = np.random.default_rng(1)
    centres = np.eye(D, dtype=np.float32)[:3]  # (3, d) orthogonal
    x = np.repeat(centres, 50, axis=0) + 0.05 * rng.normal(size=(150, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    centroids, assign = spherical_kmeans(x, 3, seed=0)
    assert sorted(np.bincount(assign).tolist()) == [50, 50, 50]
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)


def test_readers_share_the_lock_and_a_writer_waits_its_turn() -> None:
    lock = ReadWriteLock()
    inside, order = threading.Barrier(2, timeout=5), []

    def reader(name: str) -> None:
        with lock.read():
            inside.wait()  # both readers are in at once, or this times out
            order.append(name)

    readers = [threading.Thread(target=reader, args=(n,)) for n in ("r1", "r2")]
    for t in readers:
        t.start()
    for t in readers:
        t.join(5)
    assert sorted(order) == ["r1", "r2"]

    stop = threading.Event()

    def busy_writer() -> None:  # writes in a loop: another writer must still get in
        while not stop.is_set():
            with lock.write():
                pass

    looping = threading.Thread(target=busy_writer)
    looping.start()
    done = threading.Event()

    def other() -> None:
        with lock.write(), lock.write():  # re-entered by its holder
            done.set()

    threading.Thread(target=other).start()
    assert done.wait(5), "a writer looping on the lock starved another writer"
    stop.set()
    looping.join(5)


class _Counting:
    """A collection stand-in that records its calls: the searcher's batching is what is tested."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.release = threading.Event()

    def search(
        self, queries: np.ndarray, top_k: int, nprobe: int, code_scores: np.ndarray, where: Filter = MATCH_ALL
    ) -> list:
        self.release.wait(5)
        self.calls.append(queries.shape[0])
        return [([], int(q[0])) for q in queries]


def test_searches_arriving_while_the_threads_are_busy_go_together() -> None:
    async def main() -> tuple[list[int], list[int]]:
        searcher, coll = Searcher(threads=1), _Counting()
        query = [np.full(4, float(i), np.float32) for i in range(6)]
        first = asyncio.ensure_future(searcher.search(coll, query[0], 5, 0, np.zeros(K)))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        rest = [asyncio.ensure_future(searcher.search(coll, q, 5, 0, np.zeros(K))) for q in query[1:]]  # type: ignore[arg-type]
        await asyncio.sleep(0)
        rest[2].cancel()  # a caller gone before its turn is skipped
        coll.release.set()
        answers = await asyncio.gather(first, *rest, return_exceptions=True)
        searcher.close()
        return coll.calls, [a[1] for a in answers if isinstance(a, tuple)]

    t0 = time.perf_counter()
    calls, scored = asyncio.run(main())
    assert calls == [1, 4] and scored == [0, 1, 2, 4, 5], (calls, scored)
    assert time.perf_counter() - t0 < 5


def test_a_scan_shared_with_helpers_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan, "CHUNK_ROWS", 40)  # many chunks for the caller and its helpers
    monkeypatch.setattr(scan, "pool", scan.ScanPool(3))
    monkeypatch.setattr(scan, "MIN_SHARED_CHUNKS", 2)
    ids, vectors, codes, payloads = data(900)
    c = BuiltinCollection(spec(), tmp_path)
    c.upsert(ids, vectors, codes, payloads)
    for q in data(5, seed=6)[1]:
        hits, scored = search(c, q, 10)
        assert scored == 900 and [h.id for h in hits] == brute_force(vectors, ids, q, 10)
    done: list[int] = []
    scan.pool.run([lambda i=i: done.append(i) for i in range(50)])
    assert sorted(done) == list(range(50))  # every chunk once, whoever took it


def test_a_lists_centroid_follows_its_records(tmp_path: Path, small_lists: None) -> None:
    ids, vectors, codes, payloads = data(300)
    codes[:] = 1
    c = BuiltinCollection(spec(), tmp_path)
    c.upsert(ids, vectors, codes, payloads)
    c.delete(ids[:40])
    c.upsert(ids[40:60], vectors[:20], codes[:20], payloads[:20])  # replaced: moved, maybe across lists
    for li in c.by_code[1]:
        lst = c.lists[li]
        mean = np.sum([c.get([i])[i][0] for i in lst.ids], axis=0)
        assert np.allclose(c.centroids[li], mean / np.linalg.norm(mean), atol=1e-5)
