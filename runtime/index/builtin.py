"""The built-in collection (the embedded default), laid out as an inverted file: one contiguous
float32 array per codebook list, holding the vectors whose top code it is. Routed search reads only
the `nprobe` probed lists (no gather, no copy); exact search reads every list. Durable through
runtime/index/wal.py.

Rows are dense: a delete moves the list's last row into the hole, so a search never skips
tombstones. Every operation holds the collection's lock; the server calls them from worker threads
(numpy releases the GIL in the products). A snapshot is taken when the log outgrows both
`snapshot_bytes` and the last snapshot (so rewriting is amortised: at most about twice the data),
and on close, so recovery replays a bounded log.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from runtime.index import wal
from runtime.index.base import CollectionSpec, Hit, top_hits

log = logging.getLogger(__name__)


class _List:
    """The records of one codebook list: vectors[:n] (n, d), ids and payloads by row."""

    def __init__(self, dim: int) -> None:
        self.vectors = np.zeros((0, dim), dtype=np.float32)  # (capacity, d)
        self.ids: list[str] = []
        self.payloads: list[str] = []

    def append(self, record_id: str, vector: np.ndarray, payload: str) -> int:
        row = len(self.ids)
        if row == self.vectors.shape[0]:
            grown = np.zeros((max(16, 2 * row), self.vectors.shape[1]), dtype=np.float32)
            grown[:row] = self.vectors[:row]
            self.vectors = grown
        self.vectors[row] = vector
        self.ids.append(record_id)
        self.payloads.append(payload)
        return row

    def remove(self, row: int) -> str | None:
        """Removes a row; returns the id of the row moved into its place, if any."""
        last = len(self.ids) - 1
        moved = None
        if row != last:
            self.vectors[row] = self.vectors[last]
            self.ids[row], self.payloads[row] = self.ids[last], self.payloads[last]
            moved = self.ids[row]
        self.ids.pop()
        self.payloads.pop()
        return moved


class BuiltinCollection:
    def __init__(
        self, spec: CollectionSpec, root: Path, fsync: str = "always", snapshot_bytes: int = 64 << 20,
        repair: bool = False,
    ) -> None:  # fmt: skip
        self.spec, self.root, self.fsync, self.snapshot_bytes = spec, root, fsync, snapshot_bytes
        self.lock = threading.RLock()
        self.lists = [_List(spec.dim) for _ in range(spec.codebook_size)]
        self.where: dict[str, tuple[int, int]] = {}  # id -> (list, row)
        self.last_snapshot_bytes = 0
        self.generation = self._recover(repair)
        self.log = wal.Log(self._log_path(self.generation), fsync)

    # -- the Collection protocol ------------------------------------------------------------------

    def upsert(self, ids: list[str], vectors: np.ndarray, codes: np.ndarray, payloads: list[str]) -> None:
        with self.lock:
            op = wal.Op(wal.UPSERT, ids, codes.astype(np.int32), vectors.astype(np.float32), payloads)
            self.log.append(op)  # durable first, then visible
            self._apply(op)
            if self.log.size > max(self.snapshot_bytes, self.last_snapshot_bytes):
                self._snapshot()

    def delete(self, ids: list[str]) -> int:
        with self.lock:
            present = [i for i in dict.fromkeys(ids) if i in self.where]
            if present:
                op = wal.Op(wal.DELETE, present)
                self.log.append(op)
                self._apply(op)
            return len(present)

    def search(self, query: np.ndarray, top_k: int, probe_codes: np.ndarray | None) -> tuple[list[Hit], int]:
        with self.lock:
            probed = range(len(self.lists)) if probe_codes is None else [int(c) for c in probe_codes]
            parts = [(c, self.lists[c]) for c in probed if self.lists[c].ids]
            if not parts:
                return [], 0
            scores = np.concatenate([lst.vectors[: len(lst.ids)] @ query for _, lst in parts])  # (m,)
            ends = np.cumsum([len(lst.ids) for _, lst in parts])  # where each list's scores end
            best, best_scores = top_hits(scores, None, top_k)
            hits = []
            for position, score in zip(best.tolist(), best_scores.tolist(), strict=True):
                part = int(np.searchsorted(ends, position, side="right"))
                lst = parts[part][1]
                row = position - (int(ends[part - 1]) if part else 0)
                hits.append(Hit(lst.ids[row], float(score), lst.payloads[row]))
            return hits, int(scores.shape[0])

    def get(self, ids: list[str]) -> dict[str, tuple[np.ndarray, str]]:
        with self.lock:
            out = {}
            for i in ids:
                if i in self.where:
                    c, row = self.where[i]
                    out[i] = (self.lists[c].vectors[row].copy(), self.lists[c].payloads[row])
            return out

    def count(self) -> int:
        return len(self.where)

    def close(self) -> None:
        with self.lock:
            if self.log.size > 0:  # else the newest snapshot already holds everything
                self._snapshot()
            self.log.close()

    def destroy(self) -> None:
        """Closes without a snapshot (the collection is being dropped)."""
        self.log.close()

    # -- state ------------------------------------------------------------------------------------

    def _apply(self, op: wal.Op) -> None:
        if op.kind == wal.DELETE:
            for record_id in op.ids:
                self._remove(record_id)
            return
        assert op.vectors is not None and op.codes is not None and op.payloads is not None
        for i, record_id in enumerate(op.ids):
            self._remove(record_id)
            code = int(op.codes[i])
            self.where[record_id] = (code, self.lists[code].append(record_id, op.vectors[i], op.payloads[i]))

    def _remove(self, record_id: str) -> None:
        found = self.where.pop(record_id, None)
        if found is None:
            return
        code, row = found
        moved = self.lists[code].remove(row)
        if moved is not None:
            self.where[moved] = (code, row)

    def _records(self) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
        """Every record, list by list: (ids, codes (n,), vectors (n, d), payloads)."""
        ids, payloads, codes, vectors = [], [], [], []
        for c, lst in enumerate(self.lists):
            n = len(lst.ids)
            ids += lst.ids
            payloads += lst.payloads
            codes.append(np.full(n, c, dtype=np.int32))
            vectors.append(lst.vectors[:n])
        return ids, np.concatenate(codes), np.concatenate(vectors), payloads

    # -- durability -------------------------------------------------------------------------------

    def _log_path(self, generation: int) -> Path:
        return self.root / f"wal-{generation}.log"

    def _snapshot_path(self, generation: int) -> Path:
        return self.root / f"snapshot-{generation}.npz"

    def _recover(self, repair: bool) -> int:
        snapshots = sorted(int(p.stem.split("-")[1]) for p in self.root.glob("snapshot-*.npz"))
        generation = snapshots[-1] if snapshots else 0
        if snapshots:
            ids, codes, vectors, payloads = wal.read_snapshot(self._snapshot_path(generation))
            self._apply(wal.Op(wal.UPSERT, ids, codes, vectors, payloads))
        replayed = 0
        for op in wal.replay(self._log_path(generation), self.spec.dim, repair):
            self._apply(op)
            replayed += 1
        if snapshots:
            self.last_snapshot_bytes = self._snapshot_path(generation).stat().st_size
        if snapshots or replayed:
            log.info("collection %s: %d records (snapshot %d + %d log records)",
                     self.spec.name, self.count(), generation, replayed)  # fmt: skip
        return generation

    def _snapshot(self) -> None:
        """Starts generation g+1: snapshot of everything, a fresh log, the old files removed."""
        nxt = self.generation + 1
        wal.write_snapshot(self._snapshot_path(nxt), *self._records())
        self.last_snapshot_bytes = self._snapshot_path(nxt).stat().st_size
        old_log = self.log
        self.log = wal.Log(self._log_path(nxt), self.fsync)
        old_log.close()
        for path in (self._log_path(self.generation), self._snapshot_path(self.generation)):
            path.unlink(missing_ok=True)
        self.generation = nxt
