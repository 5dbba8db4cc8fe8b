"""The built-in collection (the embedded default): vectors in one contiguous float32 array, exact
search as one matrix-vector product, codebook-routed search over the rows whose top code is among
the query's `nprobe` best, durable through runtime/index/wal.py.

Rows are dense: a delete moves the last row into the hole, so a search never skips tombstones.
Every operation holds the collection's lock; the server calls them from worker threads (numpy
releases the GIL in the products). A snapshot is taken when the log passes `snapshot_bytes`, and
on close, so recovery replays at most that much log.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from runtime.index import wal
from runtime.index.base import CollectionSpec, Hit, top_hits

log = logging.getLogger(__name__)


class BuiltinCollection:
    def __init__(
        self, spec: CollectionSpec, root: Path, fsync: str = "always", snapshot_bytes: int = 64 << 20,
        repair: bool = False,
    ) -> None:  # fmt: skip
        self.spec, self.root, self.fsync, self.snapshot_bytes = spec, root, fsync, snapshot_bytes
        self.lock = threading.RLock()
        self.vectors = np.zeros((1024, spec.dim), dtype=np.float32)  # (capacity, d); rows [0, n) live
        self.codes = np.zeros(1024, dtype=np.int32)  # (capacity,) top code of each row
        self.ids: list[str] = []
        self.payloads: list[str] = []
        self.row_of: dict[str, int] = {}
        self.generation = self._recover(repair)
        self.log = wal.Log(self._log_path(self.generation), fsync)

    # -- the Collection protocol ------------------------------------------------------------------

    def upsert(self, ids: list[str], vectors: np.ndarray, codes: np.ndarray, payloads: list[str]) -> None:
        with self.lock:
            op = wal.Op(wal.UPSERT, ids, codes.astype(np.int32), vectors.astype(np.float32), payloads)
            self.log.append(op)  # durable first, then visible
            self._apply(op)
            if self.log.size > self.snapshot_bytes:
                self._snapshot()

    def delete(self, ids: list[str]) -> int:
        with self.lock:
            present = [i for i in dict.fromkeys(ids) if i in self.row_of]
            if present:
                op = wal.Op(wal.DELETE, present)
                self.log.append(op)
                self._apply(op)
            return len(present)

    def search(self, query: np.ndarray, top_k: int, probe_codes: np.ndarray | None) -> tuple[list[Hit], int]:
        with self.lock:
            n = len(self.ids)
            if probe_codes is None:
                scores = self.vectors[:n] @ query  # (n,)
                rows = None
            else:
                wanted = np.zeros(self.spec.codebook_size, dtype=bool)
                wanted[probe_codes] = True
                rows = np.flatnonzero(wanted[self.codes[:n]])  # (m,) rows in the probed lists
                scores = self.vectors[rows] @ query  # (m,)
            best, best_scores = top_hits(scores, rows, top_k)
            hits = [
                Hit(self.ids[r], float(s), self.payloads[r]) for r, s in zip(best, best_scores, strict=True)
            ]
            return hits, int(scores.shape[0])

    def get(self, ids: list[str]) -> dict[str, tuple[np.ndarray, str]]:
        with self.lock:
            rows = {i: self.row_of[i] for i in ids if i in self.row_of}
            return {i: (self.vectors[r].copy(), self.payloads[r]) for i, r in rows.items()}

    def count(self) -> int:
        return len(self.ids)

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
            row = self.row_of.get(record_id)
            if row is None:
                row = len(self.ids)
                self._reserve(row + 1)
                self.ids.append(record_id)
                self.payloads.append(op.payloads[i])
                self.row_of[record_id] = row
            else:
                self.payloads[row] = op.payloads[i]
            self.vectors[row] = op.vectors[i]
            self.codes[row] = op.codes[i]

    def _remove(self, record_id: str) -> None:
        row = self.row_of.pop(record_id, None)
        if row is None:
            return
        last = len(self.ids) - 1
        if row != last:  # move the last row into the hole
            moved = self.ids[last]
            self.vectors[row], self.codes[row] = self.vectors[last], self.codes[last]
            self.ids[row], self.payloads[row] = moved, self.payloads[last]
            self.row_of[moved] = row
        self.ids.pop()
        self.payloads.pop()

    def _reserve(self, rows: int) -> None:
        if rows <= self.vectors.shape[0]:
            return
        capacity = max(rows, 2 * self.vectors.shape[0])
        vectors = np.zeros((capacity, self.spec.dim), dtype=np.float32)
        vectors[: len(self.ids)] = self.vectors[: len(self.ids)]
        codes = np.zeros(capacity, dtype=np.int32)
        codes[: len(self.ids)] = self.codes[: len(self.ids)]
        self.vectors, self.codes = vectors, codes

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
        if snapshots or replayed:
            log.info("collection %s: %d records (snapshot %d + %d log records)",
                     self.spec.name, len(self.ids), generation, replayed)  # fmt: skip
        return generation

    def _snapshot(self) -> None:
        """Starts generation g+1: snapshot of everything, a fresh log, the old files removed."""
        n, nxt = len(self.ids), self.generation + 1
        wal.write_snapshot(
            self._snapshot_path(nxt), self.ids, self.codes[:n], self.vectors[:n], self.payloads
        )
        old_log = self.log
        self.log = wal.Log(self._log_path(nxt), self.fsync)
        old_log.close()
        for path in (self._log_path(self.generation), self._snapshot_path(self.generation)):
            path.unlink(missing_ok=True)
        self.generation = nxt
