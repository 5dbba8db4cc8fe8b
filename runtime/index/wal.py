"""Durability of the built-in collection: write-ahead logs and snapshots, in one directory.

    DIR/snapshot-<g>.npz   every record as generation g began (there is none for g = 0)
    DIR/wal-<g>.log        the writes of generation g, in order

A snapshot of generation g is written in the background after wal-<g> has been opened, so the
writes go on meanwhile (runtime/index/builtin.py). Recovery therefore loads the newest snapshot S
(or nothing) and replays the chain wal-S, wal-S+1, ... in order; the chain must be whole — a
missing snapshot or log stops the start with the missing file named. Files of generations below S
are leftovers of an interrupted clean-up and are removed.

A write is appended as one framed record with one `write()`, then fsynced by policy before the
caller is answered: `always` (every write; writers waiting together share one fsync; survives
power loss), `interval` (a background fsync every
interval; survives `kill -9`, may lose the last interval on power loss), `never` (the OS decides).
A write that finds the disk full is undone (the file cut back) and raises DiskFull.

    record = u32 body length | u32 crc32(body) | body
    body   = u8 op (1 upsert, 2 delete) | u32 n | n entries
    upsert = u16 id length | id utf-8 | i32 top code | d float32 | u32 payload length | payload utf-8
    delete = u16 id length | id utf-8

A damaged record is never skipped silently. Only the newest log's last record may be torn — a
process killed inside a large `write()`, or a power loss before its fsync, both before the write was
answered — so a record cut short at the end of that log, one that fails its CRC and ends exactly at
the end, and a tail of zero bytes are dropped at recovery with a warning. Anything else raises
CorruptLog naming the file, the byte offset and how many records before it are intact; with
`repair=True` the bad tail is moved to a side file and recovery goes on.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import CorruptData, DiskFull

log = logging.getLogger(__name__)
FSYNC = ("always", "interval", "never")
UPSERT, DELETE = 1, 2
HEADER = struct.Struct("<II")
MIN_BODY = 5  # u8 op + u32 n
LOG_FILE = re.compile(r"^wal-(\d+)\.log$")
SNAPSHOT_FILE = re.compile(r"^snapshot-(\d+)\.npz$")
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class CorruptLog(CorruptData):
    """The log has a damaged record; the message says where and how to repair."""


@dataclass(frozen=True)
class Op:
    kind: int  # UPSERT | DELETE
    ids: list[str]
    codes: np.ndarray | None = None  # (n,) int32
    vectors: np.ndarray | None = None  # (n, d) float32
    payloads: list[str] | None = None


@dataclass(frozen=True)
class Part:
    """One codebook list's records as a snapshot sees them: rows 0..n of `vectors`."""

    code: int
    vectors: np.ndarray  # (n, d) float32, a view the writers no longer change (builtin.py)
    ids: list[str]
    payloads: list[str]


def encode(op: Op) -> bytes:
    parts = [struct.pack("<BI", op.kind, len(op.ids))]
    for i, record_id in enumerate(op.ids):
        raw = record_id.encode()
        parts.append(struct.pack("<H", len(raw)) + raw)
        if op.kind == UPSERT:
            assert op.codes is not None and op.vectors is not None and op.payloads is not None
            payload = op.payloads[i].encode()
            parts.append(struct.pack("<i", int(op.codes[i])))
            parts.append(np.ascontiguousarray(op.vectors[i], dtype="<f4").tobytes())
            parts.append(struct.pack("<I", len(payload)) + payload)
    body = b"".join(parts)
    return HEADER.pack(len(body), zlib.crc32(body)) + body


def decode(body: bytes, dim: int, codebook_size: int) -> Op:
    """A record's body -> Op; raises ValueError where the bytes do not make one."""
    try:
        kind, n = struct.unpack_from("<BI", body, 0)
        if kind not in (UPSERT, DELETE):
            raise ValueError(f"unknown op {kind}")
        pos = 5
        ids, codes, vectors, payloads = [], [], [], []
        for _ in range(n):
            (length,) = struct.unpack_from("<H", body, pos)
            ids.append(body[pos + 2 : pos + 2 + length].decode())
            pos += 2 + length
            if kind == UPSERT:
                (code,) = struct.unpack_from("<i", body, pos)
                if not 0 <= code < codebook_size:
                    raise ValueError(f"code {code} outside 0..{codebook_size - 1}")
                codes.append(code)
                vectors.append(np.frombuffer(body, dtype="<f4", count=dim, offset=pos + 4))
                pos += 4 + 4 * dim
                (length,) = struct.unpack_from("<I", body, pos)
                payloads.append(body[pos + 4 : pos + 4 + length].decode())
                pos += 4 + length
        if pos != len(body):
            raise ValueError(f"{len(body) - pos} bytes left over after {n} entries")
    except (struct.error, UnicodeDecodeError) as e:
        raise ValueError(str(e)) from e
    if kind == UPSERT:
        stacked = np.stack(vectors) if vectors else np.zeros((0, dim), np.float32)
        return Op(kind, ids, np.asarray(codes, np.int32), stacked.astype(np.float32), payloads)
    return Op(kind, ids)


def _no_space(path: Path, e: OSError) -> DiskFull:
    return DiskFull(f"the disk holding {path.parent} is full ({e.strerror}): the write was not applied")


class Log:
    """The open log of one generation. `append` writes a record (the caller holds the collection's
    lock, so records are in the order they apply); `sync(end)` then makes it durable per the fsync
    policy. With `always`, writers that wait in `sync` together share one fsync (group commit):
    the first one in syncs everything written so far, and the others find their records covered."""

    def __init__(self, path: Path, fsync: str, interval_ms: float = 100.0) -> None:
        if fsync not in FSYNC:
            raise ValueError(f"fsync policy {fsync!r} is not one of {', '.join(FSYNC)}")
        self.path, self.fsync = path, fsync
        new = not path.exists()
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if new:  # the file's name is durable too, not only its bytes
            fsync_dir(path.parent)
        self.size = os.fstat(self.fd).st_size
        self.synced = self.size  # bytes known to be on disk
        self.sync_lock = threading.Lock()
        self.dirty = False
        self.closed = threading.Event()
        if fsync == "interval":
            threading.Thread(target=self._sync_every, args=(interval_ms / 1000,), daemon=True).start()

    def append(self, op: Op) -> int:
        """Writes one record and returns where it ends; on a failure the file is cut back to where
        it was and nothing applies."""
        record = encode(op)
        try:
            written = os.write(self.fd, record)
            if written != len(record):  # a disk that filled up mid-record
                raise OSError(
                    errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} after {written} of {len(record)} bytes"
                )
        except OSError as e:
            os.ftruncate(self.fd, self.size)
            if e.errno in NO_SPACE:
                raise _no_space(self.path, e) from e
            raise
        self.size += len(record)
        self.dirty = self.fsync != "always"
        return self.size

    def sync(self, end: int) -> None:
        """Returns once bytes [0, end) are durable per the policy (at once unless `always`)."""
        if self.fsync != "always":
            return
        with self.sync_lock:
            if self.synced >= end or self.closed.is_set():  # covered by another's fsync, or by close()
                return
            upto = self.size  # every record written so far, theirs too
            os.fsync(self.fd)
            self.synced = upto

    def _sync_every(self, interval_s: float) -> None:
        while not self.closed.wait(interval_s):
            if self.dirty:
                self.dirty = False
                try:
                    os.fsync(self.fd)
                except OSError as e:  # the next `always`-style check is close(); say it now
                    log.error("%s: background fsync failed: %s", self.path, e)

    def close(self) -> None:
        with self.sync_lock:
            if self.closed.is_set():
                return
            self.closed.set()
            try:
                os.fsync(self.fd)
                self.synced = self.size
            finally:
                os.close(self.fd)


@dataclass(frozen=True)
class Chain:
    """What recovery reads: the newest snapshot (None for generation 0) and the logs after it."""

    snapshot: Path | None
    base: int  # its generation (-1: none)
    logs: list[Path]  # wal-S, wal-S+1, ..., in order
    generation: int  # the newest log's
    stale: list[Path]  # files of generations before the snapshot: an interrupted clean-up


def chain(root: Path) -> Chain:
    """The generations in `root`, checked whole; raises CorruptData naming what is missing."""
    snapshots: dict[int, Path] = {}
    logs: dict[int, Path] = {}
    for path in root.iterdir():
        if m := SNAPSHOT_FILE.match(path.name):
            snapshots[int(m[1])] = path
        elif m := LOG_FILE.match(path.name):
            logs[int(m[1])] = path
    base = max(snapshots, default=0)
    newest = max([base, *logs])
    if not snapshots and logs and min(logs) > 0:
        first = min(logs)
        raise CorruptData(
            f"{root / f'snapshot-{first}.npz'} is missing: {logs[first].name} continues from it, so the "
            "records written before it are gone. Restore the file, or move the collection's directory away."
        )
    # wal-S may be absent only when nothing follows it: a snapshot written just before its log
    missing = [g for g in range(base, newest + 1) if g not in logs and not (g == base == newest)]
    if missing:
        raise CorruptData(
            f"{root / f'wal-{missing[0]}.log'} is missing: generations {base}..{newest} must all be there "
            "for their records to be recovered. Restore the file, or move the collection's directory away."
        )
    stale = [p for g, p in [*snapshots.items(), *logs.items()] if g < base]
    chain_logs = [logs[g] for g in range(base, newest + 1) if g in logs]
    return Chain(snapshots.get(base), base if snapshots else -1, chain_logs, newest, stale)


def replay(path: Path, dim: int, codebook_size: int, repair: bool, last: bool) -> Iterator[Op]:
    """The ops of a log, in order. A damaged record raises CorruptLog (or, with `repair`, is moved
    aside); in the newest log (`last`), a torn final record is dropped with a warning."""
    if not path.is_file():
        return
    data = path.read_bytes()
    pos = n = 0
    while pos < len(data):
        why, torn = _damage(data, pos)
        if not why:
            length = HEADER.unpack_from(data, pos)[0]
            try:
                op = decode(data[pos + HEADER.size : pos + HEADER.size + length], dim, codebook_size)
            except ValueError as e:
                why = f"a record that passes its CRC but does not decode ({e})"
        if why:
            if torn and last:
                _drop_torn(path, data, pos, why)
            else:
                _corrupt_tail(path, data, pos, n, why, repair)
            return
        yield op
        pos += HEADER.size + length
        n += 1


def _damage(data: bytes, pos: int) -> tuple[str, bool]:
    """(what is wrong with the record at pos or "", whether it looks torn: the file's final record)."""
    rest = len(data) - pos
    if not any(data[pos:]):
        return f"{rest} zero bytes where records should be", True
    if rest < HEADER.size:
        return f"{rest} stray bytes where a record header should be", True
    length, crc = HEADER.unpack_from(data, pos)
    end = pos + HEADER.size + length
    if length < MIN_BODY:
        return f"a record header claiming {length} bytes", False
    if end > len(data):
        return f"record of {length} bytes cut short at {len(data) - pos - HEADER.size}", True
    if zlib.crc32(data[pos + HEADER.size : end]) != crc:
        return "CRC mismatch", end == len(data)
    return "", False


def _drop_torn(path: Path, data: bytes, pos: int, why: str) -> None:
    with path.open("r+b") as f:
        f.truncate(pos)
        os.fsync(f.fileno())
    log.warning(
        "%s: dropped a torn final record (%s; %d bytes at byte %d): it was being written when the process "
        "stopped and was never acknowledged", path, why, len(data) - pos, pos,
    )  # fmt: skip


def _corrupt_tail(path: Path, data: bytes, pos: int, n: int, why: str, repair: bool) -> None:
    if not repair:
        raise CorruptLog(
            f"{path}: the record at byte {pos} of {len(data)} is damaged ({why}); the {n} records before "
            "it are intact. Nothing was dropped: start with --repair-wal to move the bad tail to a side "
            "file and continue from the intact records."
        )
    side = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    side.write_bytes(data[pos:])
    with path.open("r+b") as f:
        f.truncate(pos)
        os.fsync(f.fileno())
    log.warning("%s: moved a corrupt tail of %d bytes (%s) to %s", path, len(data) - pos, why, side)


def write_snapshot(
    path: Path, parts: Sequence[Part], dim: int, cancelled: threading.Event | None = None
) -> bool:
    """Every record, atomically: a temporary file, fsync, rename, fsync the directory. The vectors
    are streamed list by list (no second copy of them in memory). Returns False, leaving nothing
    behind, when `cancelled` is set first; raises DiskFull when the disk fills up."""
    tmp = path.with_name(path.name + ".tmp")
    ids = [i.encode() for p in parts for i in p.ids]
    payloads = [s.encode() for p in parts for s in p.payloads]
    n = len(ids)
    try:
        with tmp.open("wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
                _member(z, "codes", np.concatenate([np.full(len(p.ids), p.code, np.int32) for p in parts] or
                                                   [np.zeros(0, np.int32)]))  # fmt: skip
                with z.open("vectors.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_2_0(
                        member, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)}
                    )
                    for p in parts:
                        if cancelled is not None and cancelled.is_set():
                            break
                        member.write(np.ascontiguousarray(p.vectors, dtype="<f4").data)
                _member(z, "ids", np.frombuffer(b"".join(ids), np.uint8))
                _member(z, "id_ends", np.cumsum([len(b) for b in ids], dtype=np.int64))
                _member(z, "payloads", np.frombuffer(b"".join(payloads), np.uint8))
                _member(z, "payload_ends", np.cumsum([len(b) for b in payloads], dtype=np.int64))
            if cancelled is not None and cancelled.is_set():
                tmp.unlink(missing_ok=True)
                return False
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        fsync_dir(path.parent)
        return True
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in NO_SPACE:
            raise _no_space(path, e) from e
        raise


def _member(z: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with z.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, array, allow_pickle=False)


def read_snapshot(
    path: Path, dim: int, codebook_size: int
) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(ids, codes (n,), vectors (n, d), payloads); a damaged file raises CorruptData naming it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            codes, vectors = z["codes"], z["vectors"]
            ids, payloads = _split(z["ids"], z["id_ends"]), _split(z["payloads"], z["payload_ends"])
        n = codes.shape[0]
        if vectors.shape != (n, dim) or len(ids) != n or len(payloads) != n:
            raise ValueError(
                f"{n} codes, vectors of shape {vectors.shape}, {len(ids)} ids, {len(payloads)} payloads"
            )
        if n and not (codes.min() >= 0 and codes.max() < codebook_size):
            raise ValueError(f"codes outside 0..{codebook_size - 1}")
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise CorruptData(
            f"{path}: the snapshot is unreadable ({type(e).__name__}: {e}); its records cannot be recovered "
            "from it. Restore the file from a backup, or move the collection's directory away."
        ) from e
    return ids, codes, vectors, payloads


def _split(blob: np.ndarray, ends: np.ndarray) -> list[str]:
    raw = blob.tobytes()
    if len(ends) and (ends[-1] != len(raw) or np.any(np.diff(ends) < 0) or ends[0] < 0):
        raise ValueError("string offsets do not match the bytes")
    starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
    return [raw[s:e].decode() for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
