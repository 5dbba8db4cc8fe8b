"""The built-in collection (the embedded default), laid out as an inverted file: one contiguous
float32 array per codebook list, holding the vectors whose top code it is. Routed search reads only
the `nprobe` probed lists (no gather, no copy); exact search reads every list. Durable through
runtime/index/wal.py.

Rows are dense: a delete moves the list's last row into the hole, so a search never skips
tombstones. Every operation holds the collection's lock; the server calls them from worker threads
(numpy releases the GIL in the products). Once a collection is dropped or closed, every operation
on it raises NotFound: a write in flight to a dropped collection fails, and lands nowhere else.

A snapshot is due when the log outgrows both `snapshot_bytes` and the last snapshot (so rewriting
is amortised: at most about twice the data). It never holds the lock while it writes: under the
lock the next generation's log is opened and each list handed to the snapshot as it stands (its
ids and payloads copied, its vectors shared); a writer about to overwrite shared rows copies that
list's vectors first. A background thread then writes the file and removes the generations it
replaces. A snapshot that fails (a full disk) is logged and retried later; the logs still hold
every record. Closing takes a last snapshot, so recovery replays a bounded log.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from runtime.errors import NotFound
from runtime.index import wal
from runtime.index.base import CollectionSpec, Hit, top_hits

log = logging.getLogger(__name__)


class _List:
    """The records of one codebook list: vectors[:n] (n, d), ids and payloads by row."""

    def __init__(self, dim: int) -> None:
        self.vectors = np.zeros((0, dim), dtype=np.float32)  # (capacity, d)
        self.ids: list[str] = []
        self.payloads: list[str] = []
        self.shared = False  # rows [0, n) are being read by a snapshot: copy before overwriting them

    def append(self, record_id: str, vector: np.ndarray, payload: str) -> int:
        """Writes row n, past every shared row (or into a new array): a snapshot is not disturbed."""
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
            if self.shared:  # the move overwrites a row the snapshot is reading
                self.vectors, self.shared = self.vectors.copy(), False
            self.vectors[row] = self.vectors[last]
            self.ids[row], self.payloads[row] = self.ids[last], self.payloads[last]
            moved = self.ids[row]
        self.ids.pop()
        self.payloads.pop()
        return moved

    def freeze(self, code: int) -> wal.Part:
        """The list as it stands, for a snapshot; later writes leave what it holds untouched."""
        self.shared = True
        return wal.Part(code, self.vectors[: len(self.ids)], list(self.ids), list(self.payloads))


class BuiltinCollection:
    def __init__(
        self, spec: CollectionSpec, root: Path, fsync: str = "always", snapshot_bytes: int = 64 << 20,
        repair: bool = False,
    ) -> None:  # fmt: skip
        self.spec, self.root, self.fsync, self.snapshot_bytes = spec, root, fsync, snapshot_bytes
        self.lock = threading.RLock()
        self.lists = [_List(spec.dim) for _ in range(spec.codebook_size)]
        self.where: dict[str, tuple[int, int]] = {}  # id -> (list, row)
        self.closed = False
        self.cancel = threading.Event()  # a drop stops a snapshot being written
        self.snapshotting: threading.Thread | None = None
        self.last_snapshot_bytes = 0
        self.base = -1  # the generation of the newest snapshot on disk (-1: none)
        self.generation = self._recover(repair)
        self.log = wal.Log(self._log_path(self.generation), fsync)

    # -- the Collection protocol ------------------------------------------------------------------

    def upsert(self, ids: list[str], vectors: np.ndarray, codes: np.ndarray, payloads: list[str]) -> None:
        with self.lock:
            self._check_open()
            op = wal.Op(wal.UPSERT, ids, codes.astype(np.int32), vectors.astype(np.float32), payloads)
            self.log.append(op)  # durable first, then visible
            self._apply(op)
            self._maybe_snapshot()

    def delete(self, ids: list[str]) -> int:
        with self.lock:
            self._check_open()
            present = [i for i in dict.fromkeys(ids) if i in self.where]
            if present:
                op = wal.Op(wal.DELETE, present)
                self.log.append(op)
                self._apply(op)
                self._maybe_snapshot()
            return len(present)

    def search(self, query: np.ndarray, top_k: int, probe_codes: np.ndarray | None) -> tuple[list[Hit], int]:
        with self.lock:
            self._check_open()
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
                code, lst = parts[part]
                row = position - (int(ends[part - 1]) if part else 0)
                hits.append(Hit(lst.ids[row], float(score), lst.payloads[row], code))
            return hits, int(scores.shape[0])

    def get(self, ids: list[str]) -> dict[str, tuple[np.ndarray, str]]:
        with self.lock:
            self._check_open()
            out = {}
            for i in ids:
                if i in self.where:
                    c, row = self.where[i]
                    out[i] = (self.lists[c].vectors[row].copy(), self.lists[c].payloads[row])
            return out

    def count(self) -> int:
        return len(self.where)

    def close(self) -> None:
        """Waits for a snapshot being written, then takes a last one where the logs hold anything
        it does not; a failure to write it is logged, and the logs are kept."""
        self._wait_for_snapshot()
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.log.close()
            if self.log.size > 0 or self.generation > max(self.base, 0):
                nxt = self.generation + 1
                parts = [lst.freeze(c) for c, lst in enumerate(self.lists) if lst.ids]
                self._write_snapshot(nxt, parts)

    def destroy(self) -> None:
        """Closes without a snapshot (the collection is being dropped); writes after it raise NotFound."""
        self.cancel.set()
        self._wait_for_snapshot()
        with self.lock:
            self.closed = True
            self.log.close()

    # -- state ------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise NotFound(f"collection {self.spec.name!r} was dropped")

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
        parts = [lst.freeze(c) for c, lst in enumerate(self.lists) if lst.ids]
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
        with self.lock:
            for lst in self.lists:
                lst.shared = False
            if not done:
                return
            self.base, self.last_snapshot_bytes = generation, path.stat().st_size
        for older in wal.chain(self.root).stale:
            older.unlink(missing_ok=True)

    def _wait_for_snapshot(self) -> None:
        thread = self.snapshotting
        if thread is not None:
            thread.join()
