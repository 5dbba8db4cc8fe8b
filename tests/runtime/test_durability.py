"""Collections keep every acknowledged write and put nothing in the wrong place: a write racing a
drop, torn and zero-filled log tails, damaged or missing snapshots and descriptions, directory
entries made durable, a full disk (a real one: a small tmpfs), and searches and writes that never
wait for a snapshot being written."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.errors import CorruptData, DiskFull, NotFound
from runtime.index import wal
from runtime.index.builtin import BuiltinCollection
from runtime.index.registry import Collections
from tests.runtime.test_index import D, K, data, search, spec, write_three

pytestmark = pytest.mark.integration  # starts processes, trains or exports (tests/conftest.py)

FP = "f" * 64


def state(c: BuiltinCollection) -> dict[str, tuple[bytes, str]]:
    """id -> (vector bytes, payload) of every record."""
    got = c.get(list(c.where))
    return {i: (r.vector.tobytes(), r.payload) for i, r in got.items()}


# -- a write racing a drop ------------------------------------------------------------------------


def test_a_write_to_a_dropped_collection_fails_and_lands_nowhere(tmp_path: Path) -> None:
    reg = Collections(tmp_path, D, K, FP)
    a = reg.create("a", "builtin")
    reg.drop("a")
    b = reg.create("b", "builtin")  # its log may take the file descriptor a's log had
    ids, vectors, codes, payloads = data(5)
    with pytest.raises(NotFound, match="collection 'a' was dropped"):
        a.upsert(ids, vectors, codes, payloads)
    with pytest.raises(NotFound):
        search(a, vectors[0], 3)
    assert b.count() == 0
    reg.close()
    assert Collections(tmp_path, D, K, FP).get("b").count() == 0


def test_writers_racing_drop_and_create_never_reach_the_new_collection(tmp_path: Path) -> None:
    reg = Collections(tmp_path, D, K, FP)
    ids, vectors, codes, payloads = data(20)
    for round_ in range(10):
        old = reg.create(f"a{round_}", "builtin")
        outcome: list[BaseException] = []
        writing = threading.Event()

        def write(
            c: BuiltinCollection = old, out: list[BaseException] = outcome, w: threading.Event = writing
        ) -> None:
            try:
                while True:
                    c.upsert(ids, vectors, codes, payloads)
                    w.set()
            except BaseException as e:  # how the writer ended is the point
                out.append(e)

        writer = threading.Thread(target=write)
        writer.start()
        assert writing.wait(10), outcome  # the writer is in its loop: the drop lands between or inside writes
        reg.drop(f"a{round_}")
        new = reg.create(f"b{round_}", "builtin")
        writer.join(10)
        assert isinstance(outcome[0], NotFound), repr(outcome[0])
        assert new.count() == 0
    reg.close()
    again = Collections(tmp_path, D, K, FP)
    assert {c.spec.name: c.count() for c in again.all()} == {f"b{r}": 0 for r in range(10)}


# -- torn and zero-filled log tails -----------------------------------------------------------------


def test_a_torn_final_record_is_dropped_at_start_without_repair(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log_path, starts = write_three(tmp_path)
    raw = log_path.read_bytes()
    log_path.write_bytes(raw[: starts[2] + (len(raw) - starts[2]) // 2])  # the write stopped halfway
    assert BuiltinCollection(spec(), tmp_path).count() == 20
    assert "dropped a torn final record (record of" in caplog.text and "never acknowledged" in caplog.text
    assert log_path.stat().st_size == starts[2]


@pytest.mark.parametrize(
    "tail", [b"\0" * 4096, b"\0" * 8, b"\0" * 3], ids=["zero page", "zero header", "3 zeros"]
)
def test_a_zero_filled_tail_is_dropped_not_a_crash(tmp_path: Path, tail: bytes) -> None:
    log_path, _ = write_three(tmp_path)
    log_path.write_bytes(log_path.read_bytes() + tail)
    assert BuiltinCollection(spec(), tmp_path).count() == 30
    log_path.write_bytes(log_path.read_bytes() + tail)
    assert BuiltinCollection(spec(), tmp_path, repair=True).count() == 30  # --repair-wal too


def test_a_record_that_passes_its_crc_but_does_not_decode_is_refused(tmp_path: Path) -> None:
    log_path, _ = write_three(tmp_path)
    body = struct.pack("<BI", wal.UPSERT, 3) + b"\xff" * 7  # three entries promised, seven bytes given
    log_path.write_bytes(log_path.read_bytes() + wal.HEADER.pack(len(body), zlib.crc32(body)) + body)
    with pytest.raises(wal.CorruptLog, match="passes its CRC but does not decode"):
        BuiltinCollection(spec(), tmp_path)


# -- snapshots and descriptions ---------------------------------------------------------------------


def snapshotted(root: Path, more: bool) -> tuple[Path, int]:
    """A collection with a snapshot and (more=True) log records after it, left as after a crash."""
    ids, vectors, codes, payloads = data(60)
    c = BuiltinCollection(spec(), root, snapshot_bytes=2_000)
    c.upsert(ids[:40], vectors[:40], codes[:40], payloads[:40])
    c.wait_for_snapshot()
    if more:
        c.upsert(ids[40:], vectors[40:], codes[40:], payloads[40:])
    c.log.close()
    (snapshot,) = root.glob("snapshot-*.npz")
    return snapshot, 60 if more else 40


def test_a_missing_snapshot_stops_the_start_naming_it(tmp_path: Path) -> None:
    snapshot, _ = snapshotted(tmp_path, more=True)
    snapshot.unlink()
    with pytest.raises(CorruptData, match=rf"{snapshot.name} is missing: wal-\d+.log continues from it"):
        BuiltinCollection(spec(), tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "bit flipped", "empty"])
def test_a_damaged_snapshot_stops_the_start_naming_it(tmp_path: Path, damage: str) -> None:
    snapshot, _ = snapshotted(tmp_path, more=False)
    raw = bytearray(snapshot.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "bit flipped":
        raw[len(raw) // 3] ^= 0x10  # inside the vectors
    else:
        raw = bytearray()
    snapshot.write_bytes(bytes(raw))
    with pytest.raises(CorruptData, match=rf"{snapshot}: the snapshot is unreadable"):
        BuiltinCollection(spec(), tmp_path)


def test_stray_files_beside_the_snapshot_are_ignored(tmp_path: Path) -> None:
    snapshot, n = snapshotted(tmp_path, more=True)
    shutil.copy(snapshot, tmp_path / "snapshot-1.bak.npz")
    (tmp_path / "wal-old.log").write_bytes(b"junk")
    assert BuiltinCollection(spec(), tmp_path).count() == n
    assert (tmp_path / "snapshot-1.bak.npz").exists()  # not ours to remove


def test_a_collection_folder_without_a_readable_description_stops_the_start(tmp_path: Path) -> None:
    reg = Collections(tmp_path, D, K, FP)
    reg.create("c", "builtin")
    reg.close()
    meta = tmp_path / "collections" / "c" / "meta.json"
    meta.write_text("{not json")
    with pytest.raises(CorruptData, match=rf"{meta}: unreadable collection description"):
        Collections(tmp_path, D, K, FP)
    meta.unlink()
    with pytest.raises(CorruptData, match=rf"{meta} is missing"):
        Collections(tmp_path, D, K, FP)


def test_an_unfinished_creation_is_removed_and_its_name_is_free(tmp_path: Path) -> None:
    leftover = tmp_path / "collections" / ".c.creating"
    leftover.mkdir(parents=True)
    (leftover / "meta.json").write_text("{}")
    reg = Collections(tmp_path, D, K, FP)
    assert not leftover.exists()
    assert reg.create("c", "builtin").count() == 0


# -- directory entries ------------------------------------------------------------------------------


def test_renames_and_new_files_are_made_durable_in_their_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    root = tmp_path / "collections"
    reg = Collections(tmp_path, D, K, FP)
    c = reg.create("c", "builtin")
    assert str(root) in synced  # the rename into place
    synced.clear()
    assert isinstance(c, BuiltinCollection)
    c.snapshot_bytes = 500
    ids, vectors, codes, payloads = data(20)
    c.upsert(ids, vectors, codes, payloads)  # a new generation: a new log file
    c.wait_for_snapshot()
    assert str(root / "c") in synced
    synced.clear()
    reg.drop("c")
    assert str(root) in synced


# -- a full disk ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: writes there really fail with ENOSPC."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)  # lazily: a test may hold a file open


def test_a_full_disk_fails_the_write_by_name_and_loses_nothing(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = BuiltinCollection(spec(), small_disk, snapshot_bytes=64 << 20)
    ids, vectors, codes, payloads = data(200)
    payloads = [json.dumps({"text": "x" * 1000})] * 200
    acknowledged = 0
    with pytest.raises(DiskFull, match=rf"the disk holding {small_disk} is full \(No space left on device"):
        for round_ in range(1000):
            c.upsert([f"{round_}-{i}" for i in ids], vectors, codes, payloads)
            acknowledged += 200
    size = c.log.size
    assert (small_disk / "wal-0.log").stat().st_size == size  # the failed record was cut back off
    c.close()  # its snapshot cannot be written either: logged, the logs kept, nothing left behind
    assert "not written" in caplog.text and not list(small_disk.glob("*.tmp"))
    again = BuiltinCollection(spec(), small_disk)
    assert again.count() == acknowledged
    again.destroy()


# -- snapshots in the background --------------------------------------------------------------------


def test_searches_and_writes_do_not_wait_for_a_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot is held at its start (a slow disk); meanwhile searches, upserts and deletes —
    deletes move rows inside the lists the snapshot is reading — go on, and after a crash the
    snapshot plus the log give exactly the final state."""
    release, started = threading.Event(), threading.Event()
    real_write = wal.write_snapshot

    def slow_write(*args: object, **kwargs: object) -> bool:
        started.set()
        release.wait(30)
        return real_write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(wal, "write_snapshot", slow_write)
    ids, vectors, codes, payloads = data(400)
    c = BuiltinCollection(spec(), tmp_path, snapshot_bytes=5_000)
    trigger = threading.Thread(target=c.upsert, args=(ids[:200], vectors[:200], codes[:200], payloads[:200]))
    trigger.start()
    trigger.join(5)
    try:
        assert not trigger.is_alive(), "the upsert that made a snapshot due waited for it"
        assert started.wait(5)
        t0 = time.perf_counter()
        search(c, vectors[0], 5)
        c.delete(ids[:50])  # rows move within the shared lists
        c.upsert(ids[200:], vectors[200:], codes[200:], payloads[200:])
        c.upsert(ids[60:70], vectors[300:310], codes[300:310], ['{"v": 2}'] * 10)
        assert time.perf_counter() - t0 < 2.0
    finally:
        release.set()
    c.wait_for_snapshot()
    want = state(c)
    c.log.close()  # a crash after the snapshot: its generation's log replays on top
    assert state(BuiltinCollection(spec(), tmp_path)) == want
