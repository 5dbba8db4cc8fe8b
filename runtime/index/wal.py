"""Durability of the built-in collection: a write-ahead log and snapshots, in one directory.

    DIR/snapshot-<gen>.npz   every record at the moment generation <gen> began (absent for gen 0)
    DIR/wal-<gen>.log        the writes since, in order

A write is appended as one framed record with one `write()` (a killed process never leaves half a
record: SIGKILL lands between syscalls), then fsynced by policy before the caller is answered:
`always` (each write; survives power loss), `interval` (a background fsync every interval; survives
`kill -9`, may lose the last interval on power loss), `never` (the OS decides).

    record = u32 body length | u32 crc32(body) | body
    body   = u8 op (1 upsert, 2 delete) | u32 n | n entries
    upsert = u16 id length | id utf-8 | i32 top code | d float32 | u32 payload length | payload utf-8
    delete = u16 id length | id utf-8

Recovery loads the newest snapshot and replays its log. A record that is cut short or fails its
CRC is never skipped silently: `CorruptLog` names the file and byte offset and how many records
before it are intact; starting with `repair=True` moves the bad tail to a side file and goes on.
Snapshots are written to a temporary file, fsynced and renamed before the older files are removed.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import TesseraError

log = logging.getLogger(__name__)
FSYNC = ("always", "interval", "never")
UPSERT, DELETE = 1, 2
HEADER = struct.Struct("<II")


class CorruptLog(TesseraError):
    """The log has a torn or corrupt record; the message says where and how to repair."""


@dataclass(frozen=True)
class Op:
    kind: int  # UPSERT | DELETE
    ids: list[str]
    codes: np.ndarray | None = None  # (n,) int32
    vectors: np.ndarray | None = None  # (n, d) float32
    payloads: list[str] | None = None


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


def decode(body: bytes, dim: int) -> Op:
    kind, n = struct.unpack_from("<BI", body, 0)
    pos = 5
    ids, codes, vectors, payloads = [], [], [], []
    for _ in range(n):
        (length,) = struct.unpack_from("<H", body, pos)
        ids.append(body[pos + 2 : pos + 2 + length].decode())
        pos += 2 + length
        if kind == UPSERT:
            (code,) = struct.unpack_from("<i", body, pos)
            codes.append(code)
            vectors.append(np.frombuffer(body, dtype="<f4", count=dim, offset=pos + 4))
            pos += 4 + 4 * dim
            (length,) = struct.unpack_from("<I", body, pos)
            payloads.append(body[pos + 4 : pos + 4 + length].decode())
            pos += 4 + length
    if kind == UPSERT:
        return Op(kind, ids, np.asarray(codes, np.int32), np.stack(vectors).astype(np.float32), payloads)
    return Op(kind, ids)


class Log:
    """The open log of one generation; `append` is durable per the fsync policy when it returns."""

    def __init__(self, path: Path, fsync: str, interval_ms: float = 100.0) -> None:
        if fsync not in FSYNC:
            raise ValueError(f"fsync policy {fsync!r} is not one of {', '.join(FSYNC)}")
        self.path, self.fsync = path, fsync
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self.fd).st_size
        self.dirty = False
        self.closed = threading.Event()
        if fsync == "interval":
            threading.Thread(target=self._sync_every, args=(interval_ms / 1000,), daemon=True).start()

    def append(self, op: Op) -> None:
        record = encode(op)
        written = os.write(self.fd, record)
        if written != len(record):  # a full disk: undo the partial record, fail the write
            os.ftruncate(self.fd, self.size)
            raise OSError(f"{self.path}: short write ({written} of {len(record)} bytes)")
        self.size += written
        if self.fsync == "always":
            os.fsync(self.fd)
        else:
            self.dirty = True

    def _sync_every(self, interval_s: float) -> None:
        while not self.closed.wait(interval_s):
            if self.dirty:
                self.dirty = False
                os.fsync(self.fd)

    def close(self) -> None:
        self.closed.set()
        os.fsync(self.fd)
        os.close(self.fd)


def replay(path: Path, dim: int, repair: bool) -> Iterator[Op]:
    """The ops of a log, in order; a torn or corrupt record raises CorruptLog (or is moved aside)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    pos = n = 0
    while pos < len(data):
        why = ""
        if len(data) - pos < HEADER.size:
            why = f"{len(data) - pos} stray bytes where a record header should be"
        else:
            length, crc = HEADER.unpack_from(data, pos)
            body = data[pos + HEADER.size : pos + HEADER.size + length]
            if len(body) < length:
                why = f"record of {length} bytes cut short at {len(body)}"
            elif zlib.crc32(body) != crc:
                why = "CRC mismatch"
        if why:
            _corrupt_tail(path, data, pos, n, why, repair)
            return
        yield decode(body, dim)
        pos += HEADER.size + length
        n += 1


def _corrupt_tail(path: Path, data: bytes, pos: int, n: int, why: str, repair: bool) -> None:
    if not repair:
        raise CorruptLog(
            f"{path}: the record at byte {pos} of {len(data)} is torn or corrupt ({why}); the {n} records "
            "before it are intact. Nothing was dropped: start with --repair-wal to move the bad tail to a "
            "side file and continue from the intact records."
        )
    side = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    side.write_bytes(data[pos:])
    with path.open("r+b") as f:
        f.truncate(pos)
        os.fsync(f.fileno())
    log.warning("%s: moved a corrupt tail of %d bytes (%s) to %s", path, len(data) - pos, why, side)


def write_snapshot(
    path: Path, ids: list[str], codes: np.ndarray, vectors: np.ndarray, payloads: list[str]
) -> None:
    """All records, atomically: temporary file, fsync, rename, fsync the directory."""
    id_bytes = [s.encode() for s in ids]
    payload_bytes = [s.encode() for s in payloads]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez(
            f, codes=codes.astype(np.int32), vectors=vectors.astype(np.float32),
            ids=np.frombuffer(b"".join(id_bytes), np.uint8),
            id_ends=np.cumsum([len(b) for b in id_bytes], dtype=np.int64),
            payloads=np.frombuffer(b"".join(payload_bytes), np.uint8),
            payload_ends=np.cumsum([len(b) for b in payload_bytes], dtype=np.int64),
        )  # fmt: skip
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


def read_snapshot(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    with np.load(path, allow_pickle=False) as z:
        return (
            _split(z["ids"], z["id_ends"]),
            z["codes"],
            z["vectors"],
            _split(z["payloads"], z["payload_ends"]),
        )


def _split(blob: np.ndarray, ends: np.ndarray) -> list[str]:
    raw = blob.tobytes()
    starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
    return [raw[s:e].decode() for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
