"""The built-in collection (the embedded default), laid out as an inverted file: one contiguous
float32 array per list, holding the vectors of one code of the learned codebook — or, once a code
holds more than twice CELL_ROWS records, of one of its sub-lists. Routed search reads only the
`nprobe` best lists (no gather, no copy); exact search reads every list. Durable through
runtime/index/wal.py; scanned by runtime/index/scan.py.

Routing: a record always lives under its top code (what Lookup answers, what a hit reports), so
codes and search agree. The learned codebook is coarse (K codes for any size), so a list that grows
past twice CELL_ROWS records is split by spherical k-means into sub-lists of about CELL_ROWS (a
code's first split turns its one list into sub-lists); new records of a split code join its nearest
sub-list. Every list keeps the sum of its vectors, so its centroid is the mean direction of what it
holds now, not of what it held when it was made. A query ranks every list by its centroid and scans
the `nprobe` best. Sub-lists are derived state: a snapshot stores codes only, and recovery splits
again.

A write is in the log before it is visible, and fsynced (`--fsync always`) before it is
acknowledged; the fsync happens off the lock, so writers arriving together share one (group
commit). A search may therefore see a write a moment before its writer is answered.

Rows are dense: a delete moves the list's last row into the hole, so a search never skips
tombstones. Searches share a read lock and run at once; writes take it alone (runtime/index/rwlock.py).
The server calls both from worker threads (the scan releases the GIL). Once a collection is dropped
or closed, every operation on it raises NotFound: a write in flight to a dropped collection fails,
and lands nowhere else.

Memory: a list's array grows by GROWTH, so it holds at most that much slack.

A snapshot is due when the log outgrows both `snapshot_bytes` and the last snapshot (so rewriting
is amortised: at most about twice the data). It never holds the lock while it writes: under the
lock the next generation's log is opened and each list handed to the snapshot as it stands (its
ids and payloads copied, its vectors shared); a writer about to overwrite shared rows copies that
list's vectors first. A background thread then writes the file and removes the generations it
replaces. A snapshot that fails (a full disk) is logged and retried later; the logs still hold
every record. Closing takes a last snapshot, so recovery replays a bounded log.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sortedcontainers import SortedList

from runtime.errors import NotFound
from runtime.index import scan, wal
from runtime.index.base import CollectionSpec, Hit, Results, Stored, top_hits
from runtime.index.filters import MATCH_ALL, Filter, matcher
from runtime.index.postings import Postings
from runtime.index.rwlock import ReadWriteLock
from runtime.index.scan import scores_into, scores_many

log = logging.getLogger(__name__)

CELL_ROWS = 256  # a list past twice this is split into lists of about this many vectors
GROWTH = 1.25  # a list's capacity grows by this factor: bounded slack, amortised copies
KMEANS_ROUNDS = 8
BLOCK_ROWS = 1 << 16  # a batch of exact queries is scored this many vectors at a time
SUBSET_FACTOR = 4  # an exact scan of a filter's records beats the routed scan below this many times its reads


class _List:
    """The records of one list: vectors[:n] (n, d), ids and payloads by row."""

    def __init__(self, code: int, dim: int, capacity: int = 0) -> None:
        self.code = code
        self.total = np.zeros(dim, dtype=np.float64)  # (d,) the sum of its vectors: its centroid's direction
        self.vectors = np.zeros((capacity, dim), dtype=np.float32)  # (capacity, d)
        self.ids: list[str] = []
        self.payloads: list[str] = []
        self.shared = False  # rows [0, n) are being read by a snapshot: copy before overwriting them

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self) -> np.ndarray:
        return self.vectors[: len(self.ids)]  # (n, d), contiguous

    def extend(self, ids: list[str], vectors: np.ndarray, payloads: list[str]) -> int:
        """Appends rows n.. (past every shared row, or into a new array); returns n."""
        row, need = len(self.ids), len(self.ids) + len(ids)
        if need > self.vectors.shape[0]:
            grown = np.empty((max(need, int(GROWTH * self.vectors.shape[0]), 16), self.vectors.shape[1]),
                             dtype=np.float32)  # fmt: skip
            grown[:row] = self.vectors[:row]
            self.vectors, self.shared = grown, False
        self.vectors[row:need] = vectors
        self.total += vectors.sum(axis=0, dtype=np.float64)
        self.ids.extend(ids)
        self.payloads.extend(payloads)
        return row

    def remove(self, row: int) -> str | None:
        """Removes a row; returns the id of the row moved into its place, if any."""
        last = len(self.ids) - 1
        moved = None
        self.total -= self.vectors[row]
        if row != last:
            if self.shared:  # the move overwrites a row the snapshot is reading
                self.vectors, self.shared = self.vectors.copy(), False
            self.vectors[row] = self.vectors[last]
            self.ids[row], self.payloads[row] = self.ids[last], self.payloads[last]
            moved = self.ids[row]
        self.ids.pop()
        self.payloads.pop()
        return moved

    def freeze(self) -> wal.Part:
        """The list as it stands, for a snapshot; later writes leave what it holds untouched."""
        self.shared = True
        return wal.Part(self.code, self.rows(), list(self.ids), list(self.payloads))


def spherical_kmeans(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (k, d) unit, assignment (n,)) of unit vectors x (n, d), k ≤ n."""
    rng = np.random.default_rng(seed)
    centroids = x[rng.choice(x.shape[0], k, replace=False)].copy()  # (k, d)
    members = np.arange(x.shape[0])
    for _ in range(KMEANS_ROUNDS):
        assign = (x @ centroids.T).argmax(axis=1)  # (n,)
        onehot = np.zeros((k, x.shape[0]), dtype=np.float32)
        onehot[assign, members] = 1.0
        sums = onehot @ x  # (k, d)
        norms = np.linalg.norm(sums, axis=1)
        alive = norms > 0  # an emptied centroid keeps its place
        centroids[alive] = sums[alive] / norms[alive, None]
    return centroids, (x @ centroids.T).argmax(axis=1)


class BuiltinCollection:
    def __init__(
        self, spec: CollectionSpec, root: Path, fsync: str = "always", snapshot_bytes: int = 64 << 20,
        repair: bool = False,
    ) -> None:  # fmt: skip
        self.spec, self.root, self.fsync, self.snapshot_bytes = spec, root, fsync, snapshot_bytes
        self.lock = ReadWriteLock()
        self.lists = [_List(c, spec.dim) for c in range(spec.codebook_size)]
        self.by_code = [[c] for c in range(spec.codebook_size)]  # code -> its lists
        self.centroids = np.zeros((spec.codebook_size, spec.dim), dtype=np.float32)  # (L, d) unit, 0 if empty
        self.empty = np.ones(spec.codebook_size, dtype=bool)  # (L,) holds no record
        self.where: dict[str, tuple[int, int]] = {}  # id -> (list, row)
        self.ordered = SortedList()  # every id, in order: the listing's pages
        self.postings = Postings(spec.indexed) if spec.indexed else None  # the declared payload fields
        self.closed = False
        self.cancel = threading.Event()  # a drop stops a snapshot being written
        self.snapshotting: threading.Thread | None = None
        self.last_snapshot_bytes = 0
        self.base = -1  # the generation of the newest snapshot on disk (-1: none)
        self.generation = self._recover(repair)
        self.log = wal.Log(self._log_path(self.generation), fsync)

    # -- the Collection protocol ------------------------------------------------------------------

    def upsert(self, ids: list[str], vectors: np.ndarray, codes: np.ndarray, payloads: list[str]) -> None:
        with self.lock.write():
            self._check_open()
            op = wal.Op(wal.UPSERT, ids, codes.astype(np.int32), vectors.astype(np.float32), payloads)
            log, end = self.log, self.log.append(op)  # written first, then visible
            self._apply(op)
            self._maybe_snapshot()
        log.sync(end)  # durable before it is acknowledged; off the lock, so writers share fsyncs

    def delete(self, ids: list[str]) -> int:
        with self.lock.write():
            self._check_open()
            log, end, n = self._delete([i for i in dict.fromkeys(ids) if i in self.where])
        log.sync(end)  # off the lock, as upsert's
        return n

    def delete_where(self, where: Filter) -> int:
        match = matcher(where)
        with self.lock.write():  # chosen and removed in one write: nothing matching slips between
            self._check_open()
            chosen = [i for lst in self.lists for i, p in zip(lst.ids, lst.payloads, strict=True) if match(p)]
            log, end, n = self._delete(chosen)
        log.sync(end)
        return n

    def _delete(self, present: list[str]) -> tuple[wal.Log, int, int]:
        """Logs and applies the removal of records that exist (under the write lock); returns the
        log and offset to sync before acknowledging, and how many were removed."""
        if not present:
            return self.log, 0, 0
        op = wal.Op(wal.DELETE, present)
        log, end = self.log, self.log.append(op)
        self._apply(op)
        self._maybe_snapshot()
        return log, end, len(present)

    def search(
        self, queries: np.ndarray, top_k: int, nprobe: int, code_scores: np.ndarray, where: Filter = MATCH_ALL
    ) -> Results:
        """Per query (Q, d) unit: its top_k by inner product, over every list (nprobe 0) or its nprobe
        best lists by centroid (the codebook scores are not needed: every list has its centroid),
        among the records that match `where`."""
        with self.lock.read():
            self._check_open()
            if not where.everything:
                return [self._filtered(q, top_k, nprobe, where) for q in queries]
            if nprobe == 0 and queries.shape[0] > 1:
                return self._exact_batch(queries, top_k)
            out = []
            for q in queries:
                probed = self._route(q, nprobe) if nprobe else range(len(self.lists))
                out.append(self._scan(np.ascontiguousarray(q, dtype=np.float32), top_k, probed))
            return out

    def get(self, ids: list[str], vectors: bool = True) -> dict[str, Stored]:
        with self.lock.read():
            self._check_open()
            return {i: self._stored(i, vectors) for i in ids if i in self.where}

    def page(
        self, after: str, limit: int, where: Filter = MATCH_ALL, vectors: bool = False
    ) -> list[tuple[str, Stored]]:
        match = None if where.everything else matcher(where)
        out: list[tuple[str, Stored]] = []
        with self.lock.read():
            self._check_open()
            for i in self.ordered.irange(minimum=after, inclusive=(False, False)) if after else self.ordered:
                if len(out) == limit:
                    break
                li, row = self.where[i]
                if match is None or match(self.lists[li].payloads[row]):
                    out.append((i, self._stored(i, vectors)))
        return out

    def _stored(self, record_id: str, vectors: bool) -> Stored:
        li, row = self.where[record_id]
        lst = self.lists[li]
        return Stored(lst.vectors[row].copy() if vectors else None, lst.payloads[row], lst.code)

    def count(self, where: Filter = MATCH_ALL) -> int:
        if where.everything:
            return len(self.where)
        match = matcher(where)
        with self.lock.read():
            self._check_open()
            ids, exact = self.postings.candidates(where.root) if self.postings is not None else (None, False)
            if ids is not None:
                return (
                    len(ids)
                    if exact
                    else sum(match(self.lists[li].payloads[r]) for li, r in map(self.where.get, ids))
                )
            return sum(match(p) for lst in self.lists for p in lst.payloads)

    def list_sizes(self) -> np.ndarray:
        """(L,) records per list: how balanced the routing is."""
        with self.lock.read():
            return np.array([len(lst) for lst in self.lists])

    def close(self) -> None:
        """Waits for a snapshot being written, then takes a last one where the logs hold anything
        it does not; a failure to write it is logged, and the logs are kept."""
        self.wait_for_snapshot()
        with self.lock.write():
            if self.closed:
                return
            self.closed = True
            self.log.close()
            if self.log.size > 0 or self.generation > max(self.base, 0):
                nxt = self.generation + 1
                self._write_snapshot(nxt, [lst.freeze() for lst in self.lists if lst.ids])

    def destroy(self) -> None:
        """Closes without a snapshot (the collection is being dropped); writes after it raise NotFound."""
        self.cancel.set()
        self.wait_for_snapshot()
        with self.lock.write():
            self.closed = True
            self.log.close()

    # -- search -----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise NotFound(f"collection {self.spec.name!r} was dropped")

    def _route(self, query: np.ndarray, nprobe: int) -> list[int]:
        """The nprobe best lists for a query, best first."""
        scores = self.centroids @ query  # (L,)
        scores[self.empty] = -np.inf  # a probe is never spent on an empty list
        n = min(nprobe, scores.shape[0])
        best = np.argpartition(-scores, n - 1)[:n] if n < scores.shape[0] else np.arange(n)
        return best[np.argsort(-scores[best], kind="stable")].tolist()

    def _scan(self, query: np.ndarray, top_k: int, probed: range | list[int]) -> tuple[list[Hit], int]:
        parts = [li for li in probed if self.lists[li].ids]
        ends = np.cumsum([len(self.lists[li]) for li in parts], dtype=np.int64)  # where each list ends
        if not parts:
            return [], 0
        starts = [0, *ends[:-1].tolist()]
        scores = np.empty(int(ends[-1]), dtype=np.float32)  # (m,)

        def chunk(first: int, stop: int) -> Callable[[], None]:
            def run() -> None:
                for j in range(first, stop):
                    scores_into(scores[starts[j] : ends[j]], self.lists[parts[j]].rows(), query)

            return run

        cuts = [0, *np.flatnonzero(np.diff(ends // scan.CHUNK_ROWS)) + 1, len(parts)]  # about CHUNK_ROWS each
        scan.pool.run([chunk(a, b) for a, b in itertools.pairwise(cuts) if b > a])
        best, best_scores = top_hits(scores, None, top_k)
        part = np.searchsorted(ends, best, side="right")  # (k,) which list each hit is in
        rows = best - np.concatenate([[0], ends])[part]
        found = zip(part.tolist(), rows.tolist(), best_scores.tolist(), strict=True)
        hits = [self._hit(parts[p], row, score) for p, row, score in found]
        return hits, int(ends[-1])

    def _filtered(self, query: np.ndarray, top_k: int, nprobe: int, where: Filter) -> tuple[list[Hit], int]:
        """Top-k among the records that match `where`, by the plan the postings allow: the records
        the declared fields narrow it to, scanned exactly, where that is exact search or fewer
        than SUBSET_FACTOR times what a routed search compares; else the routed scan with the
        filter inside it (the postings' ids, or the payloads, tested as each list is read)."""
        q = np.ascontiguousarray(query, dtype=np.float32)  # (d,)
        ids, exact = self.postings.candidates(where.root) if self.postings is not None else (None, False)
        match = None if exact else matcher(where)
        held = int(np.count_nonzero(~self.empty))  # lists holding records
        enough = max(top_k, math.ceil(nprobe * len(self.where) / max(held, 1)))
        if ids is not None and (nprobe == 0 or len(ids) <= SUBSET_FACTOR * enough):
            return self._subset(q, top_k, ids, match)

        def keep(lst: _List) -> np.ndarray:
            """(n,) bool: which rows of a list match."""
            n = len(lst)
            if ids is not None:
                inside = np.fromiter((i in ids for i in lst.ids), dtype=bool, count=n)
                if match is None:
                    return inside
                return inside & np.fromiter(
                    (bool(t) and match(p) for t, p in zip(inside, lst.payloads, strict=True)), bool, n
                )
            assert match is not None
            return np.fromiter(map(match, lst.payloads), dtype=bool, count=n)

        return self._routed_filtered(q, top_k, nprobe, enough if nprobe else math.inf, keep)

    def _subset(
        self, q: np.ndarray, top_k: int, ids: set[str], match: Callable[[str], bool] | None
    ) -> tuple[list[Hit], int]:
        """Exact top-k over the records `ids` (those `match` passes, where the ids are a superset)."""
        at = [self.where[i] for i in ids]
        if match is not None:
            at = [(li, row) for li, row in at if match(self.lists[li].payloads[row])]
        if not at:
            return [], 0
        places = np.array(at, dtype=np.int64)  # (m, 2) list, row
        places = places[np.lexsort((places[:, 1], places[:, 0]))]  # grouped by list, rows in order
        cuts = np.flatnonzero(np.diff(places[:, 0])) + 1
        scores = np.concatenate(
            [self.lists[int(g[0, 0])].vectors[g[:, 1]] @ q for g in np.split(places, cuts)]
        )  # (m,)
        best, best_scores = top_hits(scores, None, top_k)
        found = zip(places[best, 0].tolist(), places[best, 1].tolist(), best_scores.tolist(), strict=True)
        return [self._hit(li, row, score) for li, row, score in found], len(at)

    def _routed_filtered(
        self, q: np.ndarray, top_k: int, nprobe: int, enough: float, keep: Callable[[_List], np.ndarray]
    ) -> tuple[list[Hit], int]:
        """Lists in routing order (every list where nprobe is 0), past the nprobe best until
        `enough` matching records have been scored, so that a selective filter does not leave the
        probed lists all but empty (post-filtering's failure). `scored` counts the matching
        records compared."""
        order = self._route(q, len(self.lists)) if nprobe else range(len(self.lists))
        parts: list[tuple[int, np.ndarray, np.ndarray]] = []  # (list, rows that match, their scores)
        scored = probed = 0
        for li in order:
            lst = self.lists[li]
            if not lst.ids:
                continue
            probed += 1
            kept = np.flatnonzero(keep(lst))  # (m,)
            if kept.size:
                parts.append((li, kept, lst.vectors[kept] @ q))  # (m,)
                scored += int(kept.size)
            if probed >= nprobe and scored >= enough:
                break
        if not parts:
            return [], 0
        scores = np.concatenate([p[2] for p in parts])  # (scored,)
        owner = np.concatenate([np.full(p[1].size, j) for j, p in enumerate(parts)])  # (scored,) part of each
        rows = np.concatenate([p[1] for p in parts])  # (scored,)
        best, best_scores = top_hits(scores, None, top_k)
        found = zip(owner[best].tolist(), rows[best].tolist(), best_scores.tolist(), strict=True)
        return [self._hit(parts[j][0], row, score) for j, row, score in found], scored

    def _exact_batch(self, queries: np.ndarray, top_k: int) -> Results:
        """Exact search for queries that came together: each block of vectors is read once, for all
        of them (BLAS sgemm), and merged into a running top-k per query."""
        q = np.ascontiguousarray(queries, dtype=np.float32)  # (Q, d)
        parts = [li for li, lst in enumerate(self.lists) if lst.ids]
        total = sum(len(self.lists[li]) for li in parts)
        k = min(top_k, total)
        best_scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)  # (Q, k)
        best_list = np.zeros((q.shape[0], k), dtype=np.int64)  # (Q, k)
        best_row = np.zeros((q.shape[0], k), dtype=np.int64)  # (Q, k)
        block: list[int] = []
        for i, li in enumerate(parts):
            block.append(li)
            if i + 1 < len(parts) and sum(len(self.lists[b]) for b in block) < BLOCK_ROWS:
                continue
            sizes = np.array([len(self.lists[b]) for b in block])
            starts = np.concatenate([[0], np.cumsum(sizes)])
            scores = np.concatenate([scores_many(self.lists[b].rows(), q) for b in block], axis=1)  # (Q, m)
            pool = np.concatenate([best_scores, scores], axis=1)  # (Q, k + m)
            top = np.argpartition(-pool, k - 1, axis=1)[:, :k]  # (Q, k)
            fresh = top >= k  # from this block, not the running best
            pos = np.where(fresh, top - k, 0)
            part = np.searchsorted(starts, pos, side="right") - 1  # (Q, k)
            old = np.minimum(top, k - 1)
            best_list = np.where(fresh, np.asarray(block)[part], np.take_along_axis(best_list, old, axis=1))
            best_row = np.where(fresh, pos - starts[part], np.take_along_axis(best_row, old, axis=1))
            best_scores = np.take_along_axis(pool, top, axis=1)
            block = []
        out = []
        for s, lists, rows in zip(best_scores, best_list, best_row, strict=True):
            order = np.argsort(-s, kind="stable")
            out.append(([self._hit(int(lists[j]), int(rows[j]), float(s[j])) for j in order], total))
        return out

    def _hit(self, li: int, row: int, score: float) -> Hit:
        lst = self.lists[li]
        return Hit(lst.ids[row], score, lst.payloads[row], lst.code)

    # -- state ------------------------------------------------------------------------------------

    def _apply(self, op: wal.Op) -> None:
        if op.kind == wal.DELETE:
            for record_id in op.ids:
                if record_id in self.where:
                    self.ordered.remove(record_id)
                self._remove(record_id)
            return
        assert op.vectors is not None and op.codes is not None and op.payloads is not None
        last = {record_id: i for i, record_id in enumerate(op.ids)}  # a repeated id: the last one wins
        self.ordered.update(i for i in last if i not in self.where)
        for record_id in last:
            self._remove(record_id)
        keep = np.fromiter(last.values(), dtype=np.int64, count=len(last))
        keep = keep[np.argsort(op.codes[keep], kind="stable")]  # grouped by code
        codes = op.codes[keep]
        bounds = np.flatnonzero(np.diff(codes)) + 1
        for group in np.split(keep, bounds):
            if group.size:
                self._add(int(op.codes[group[0]]), group, op)

    def _add(self, code: int, group: np.ndarray, op: wal.Op) -> None:
        """Appends the records `group` of op, all of this code, to the code's lists."""
        assert op.vectors is not None and op.payloads is not None
        lists = self.by_code[code]
        if len(lists) == 1:
            targets = np.zeros(group.size, dtype=np.int64)
        else:
            targets = (op.vectors[group] @ self.centroids[lists].T).argmax(axis=1)  # (n,) nearest sub-list
        for t in np.unique(targets).tolist():
            rows = group[targets == t]
            ids, payloads = [op.ids[i] for i in rows.tolist()], [op.payloads[i] for i in rows.tolist()]
            first = self.lists[lists[t]].extend(ids, op.vectors[rows], payloads)
            if self.postings is not None:
                for record_id, payload in zip(ids, payloads, strict=True):
                    self.postings.add(record_id, payload)
            self.where.update(zip(ids, [(lists[t], first + j) for j in range(len(ids))], strict=True))
            self._recentre(lists[t])
        for li in lists[:]:
            if len(self.lists[li]) > 2 * CELL_ROWS:
                self._split(li)

    def _split(self, li: int) -> None:
        """Splits a list grown past twice CELL_ROWS into sub-lists of about CELL_ROWS (k-means): it
        keeps the first, its code gains the others. The code's other lists are untouched."""
        old = self.lists[li]
        vectors, ids, payloads = old.rows(), old.ids, old.payloads
        k = math.ceil(len(ids) / CELL_ROWS)
        _, assign = spherical_kmeans(vectors, k, seed=li)
        new = [li, *range(len(self.lists), len(self.lists) + k - 1)]
        self.lists.extend([old] * (k - 1))  # placeholders, replaced below
        self.centroids = np.concatenate([self.centroids, np.zeros((k - 1, self.spec.dim), np.float32)])
        self.empty = np.concatenate([self.empty, np.ones(k - 1, dtype=bool)])
        for j, target in enumerate(new):
            rows = np.flatnonzero(assign == j)
            lst = _List(old.code, self.spec.dim, capacity=int(GROWTH * rows.size))
            lst.extend([ids[r] for r in rows.tolist()], vectors[rows], [payloads[r] for r in rows.tolist()])
            self.lists[target] = lst  # a snapshot keeps the old list's arrays
            self.where.update(zip(lst.ids, [(target, r) for r in range(len(lst))], strict=True))
        self.by_code[old.code] = [*self.by_code[old.code], *new[1:]]
        for target in new:
            self._recentre(target)

    def _recentre(self, li: int) -> None:
        """The list's routing centroid, from the sum of what it holds."""
        total = self.lists[li].total
        norm = float(np.linalg.norm(total))
        self.centroids[li] = total / norm if norm > 1e-6 else 0.0
        self.empty[li] = not self.lists[li].ids

    def _remove(self, record_id: str) -> None:
        found = self.where.pop(record_id, None)
        if found is None:
            return
        li, row = found
        if self.postings is not None:
            self.postings.remove(record_id, self.lists[li].payloads[row])
        moved = self.lists[li].remove(row)
        if moved is not None:
            self.where[moved] = (li, row)
        self._recentre(li)

    # -- durability -------------------------------------------------------------------------------

    def _log_path(self, generation: int) -> Path:
        return self.root / f"wal-{generation}.log"

    def _snapshot_path(self, generation: int) -> Path:
        return self.root / f"snapshot-{generation}.npz"

    def _recover(self, repair: bool) -> int:
        for tmp in self.root.glob("snapshot-*.npz.tmp"):  # a snapshot interrupted mid-write
            tmp.unlink()
        found = wal.chain(self.root)
        if found.snapshot is not None:
            ids, codes, vectors, payloads = wal.read_snapshot(
                found.snapshot, self.spec.dim, self.spec.codebook_size
            )
            self._apply(wal.Op(wal.UPSERT, ids, codes, vectors, payloads))
            self.base, self.last_snapshot_bytes = found.base, found.snapshot.stat().st_size
        for stale in found.stale:  # only once the snapshot replacing them has been read whole
            log.info(
                "collection %s: removing %s (replaced by %s)", self.spec.name, stale.name, found.snapshot
            )
            stale.unlink()
        replayed = 0
        for i, path in enumerate(found.logs):
            last = i == len(found.logs) - 1
            for op in wal.replay(path, self.spec.dim, self.spec.codebook_size, repair, last):
                self._apply(op)
                replayed += 1
        if found.snapshot is not None or replayed:
            log.info("collection %s: %d records (%s + %d log records)", self.spec.name, self.count(),
                     found.snapshot.name if found.snapshot else "no snapshot", replayed)  # fmt: skip
        return found.generation

    def _maybe_snapshot(self) -> None:
        """Starts a snapshot when one is due and none is being written (holds the lock)."""
        due = self.log.size > max(self.snapshot_bytes, self.last_snapshot_bytes)
        if not due or (self.snapshotting is not None and self.snapshotting.is_alive()):
            return
        nxt = self.generation + 1
        try:
            fresh = wal.Log(self._log_path(nxt), self.fsync)
        except OSError as e:  # no room even for an empty file: the current log goes on
            log.warning("collection %s: could not start generation %d (%s)", self.spec.name, nxt, e)
            return
        self.log.close()
        self.log, self.generation = fresh, nxt
        parts = [lst.freeze() for lst in self.lists if lst.ids]
        self.snapshotting = threading.Thread(
            target=self._write_snapshot, args=(nxt, parts), name=f"snapshot-{self.spec.name}", daemon=True
        )
        self.snapshotting.start()

    def _write_snapshot(self, generation: int, parts: list[wal.Part]) -> None:
        """Writes snapshot-<generation> of `parts`, then removes the files it replaces."""
        path = self._snapshot_path(generation)
        try:
            done = wal.write_snapshot(path, parts, self.spec.dim, self.cancel)
        except Exception as e:  # a full disk above all: nothing is lost, the logs hold every record
            done = False
            log.warning("collection %s: %s not written (%s); the logs still hold every record",
                        self.spec.name, path.name, e)  # fmt: skip
        with self.lock.write():
            for lst in self.lists:
                lst.shared = False
            if not done:
                return
            self.base, self.last_snapshot_bytes = generation, path.stat().st_size
        for older in wal.chain(self.root).stale:
            older.unlink(missing_ok=True)

    def wait_for_snapshot(self) -> None:
        thread = self.snapshotting
        if thread is not None:
            thread.join()
