"""Collections: exact search equals a brute-force numpy reference for both backends, each hit with
its record's code; routed search only looks in the probed lists; the log replays, snapshots,
refuses a corrupt tail and repairs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import AlreadyExists, InvalidInput, NotFound
from runtime.index import wal
from runtime.index.base import Collection, CollectionSpec, Hit
from runtime.index.builtin import BuiltinCollection
from runtime.index.registry import Collections

D, K = 16, 8


def data(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, D)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    codes = rng.integers(0, K, n).astype(np.int32)
    return [f"r{i}" for i in range(n)], vectors, codes, [json.dumps({"i": i}) for i in range(n)]


def brute_force(vectors: np.ndarray, ids: list[str], query: np.ndarray, k: int) -> list[str]:
    scores = [
        sum(float(a) * float(b) for a, b in zip(v, query, strict=True)) for v in vectors
    ]  # float64 loop
    order = sorted(range(len(ids)), key=lambda i: -scores[i])
    return [ids[i] for i in order[:k]]


def search(c: Collection, q: np.ndarray, k: int, probe: list[int] | None = None) -> tuple[list[Hit], int]:
    """One query: exact, or over len(probe) lists; the codes in `probe` rank first by codebook score
    (what Milvus filters by; the built-in index ranks its lists by their centroids)."""
    scores = np.full(K, -1.0, dtype=np.float32)  # (K,)
    if probe is not None:
        scores[probe] = np.linspace(1.0, 0.5, len(probe))
    return c.search(q[None], k, 0 if probe is None else len(probe), scores[None])[0]


def spec(name: str = "c", backend: str = "builtin") -> CollectionSpec:
    return CollectionSpec(name, backend, D, K, "f" * 64)


def test_builtin_exact_search_equals_brute_force(tmp_path: Path) -> None:
    ids, vectors, codes, payloads = data(500)
    c = BuiltinCollection(spec(), tmp_path)
    c.upsert(ids, vectors, codes, payloads)
    for q in data(5, seed=1)[1]:
        hits, scored = search(c, q, 10)
        assert [h.id for h in hits] == brute_force(vectors, ids, q, 10)
        assert scored == 500
        assert json.loads(hits[0].payload) == {"i": int(hits[0].id[1:])}
        assert [h.code for h in hits] == [int(codes[int(h.id[1:])]) for h in hits]  # each its own list


def test_routed_search_scores_only_the_lists_nearest_the_query(tmp_path: Path) -> None:
    ids, vectors, codes, payloads = data(400)
    c = BuiltinCollection(spec(), tmp_path)
    c.upsert(ids, vectors, codes, payloads)
    q = data(1, seed=2)[1][0]
    means = np.stack([vectors[codes == k].sum(axis=0) for k in range(K)])  # (K, d) each list's centroid
    nearest = np.argsort(-(means / np.linalg.norm(means, axis=1, keepdims=True)) @ q)[:2].tolist()
    hits, scored = search(c, q, 10, [0, 1])  # two lists; which two is the collection's choice
    inside = [i for i in range(400) if codes[i] in nearest]
    assert scored == len(inside)
    assert [h.id for h in hits] == brute_force(vectors[inside], [ids[i] for i in inside], q, 10)


def test_upsert_replaces_and_delete_removes(tmp_path: Path) -> None:
    ids, vectors, codes, payloads = data(50)
    c = BuiltinCollection(spec(), tmp_path)
    c.upsert(ids, vectors, codes, payloads)
    c.upsert(["r3"], vectors[[7]], codes[[7]], ['{"new": true}'])
    assert c.count() == 50
    got = c.get(["r3"])["r3"]
    assert np.array_equal(got[0], vectors[7]) and got[1] == '{"new": true}'
    assert c.delete(["r0", "r0", "nope", "r49"]) == 2
    assert c.count() == 48 and set(c.get(["r0", "r49", "r1"])) == {"r1"}
    hits, _ = search(c, vectors[1], 48)
    assert {h.id for h in hits} == set(ids) - {"r0", "r49"}


def test_log_replays_after_a_crash_and_snapshots_compact_it(tmp_path: Path) -> None:
    ids, vectors, codes, payloads = data(300)
    c = BuiltinCollection(spec(), tmp_path, snapshot_bytes=10_000)  # forces several generations
    for i in range(0, 300, 20):
        c.upsert(ids[i : i + 20], vectors[i : i + 20], codes[i : i + 20], payloads[i : i + 20])
        c.wait_for_snapshot()  # one at a time: let each finish, as a slower writer would
    c.delete(ids[:10])
    assert c.generation > 1
    c.log.close()  # a crash: no closing snapshot
    again = BuiltinCollection(spec(), tmp_path)
    assert again.count() == 290
    got = again.get(ids[10:])
    assert all(np.array_equal(got[i][0], vectors[int(i[1:])]) for i in ids[10:])
    assert len(list(tmp_path.glob("wal-*.log"))) == 1 and len(list(tmp_path.glob("snapshot-*.npz"))) == 1


def write_three(tmp_path: Path) -> tuple[Path, list[int]]:
    """Three upserts of 10 records, no closing snapshot; the log and each record's start byte."""
    ids, vectors, codes, payloads = data(30)
    c = BuiltinCollection(spec(), tmp_path)
    starts = []
    for i in range(3):
        starts.append(c.log.size)
        c.upsert(ids[i * 10 : i * 10 + 10], vectors[i * 10 : i * 10 + 10], codes[:10], payloads[:10])
    c.log.close()
    return tmp_path / "wal-0.log", starts


def test_damage_before_the_last_record_is_refused_then_repaired(tmp_path: Path) -> None:
    log_path, starts = write_three(tmp_path)
    raw = bytearray(log_path.read_bytes())
    raw[starts[1] + 40] ^= 0xFF  # inside the second of three records
    log_path.write_bytes(bytes(raw))
    with pytest.raises(
        wal.CorruptLog, match=rf"wal-0.log: the record at byte {starts[1]} .*CRC mismatch.* the 1 records"
    ):
        BuiltinCollection(spec(), tmp_path)
    repaired = BuiltinCollection(spec(), tmp_path, repair=True)
    assert repaired.count() == 10
    assert len(list(tmp_path.glob("wal-0.log.corrupt-*"))) == 1


def test_a_flipped_byte_in_the_final_record_is_a_torn_write_and_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log_path, starts = write_three(tmp_path)
    raw = bytearray(log_path.read_bytes())
    raw[starts[2] + 40] ^= 0xFF
    log_path.write_bytes(bytes(raw))
    assert BuiltinCollection(spec(), tmp_path).count() == 20
    assert "dropped a torn final record (CRC mismatch" in caplog.text


def test_registry_creates_reopens_and_drops(tmp_path: Path) -> None:
    reg = Collections(tmp_path, D, K, "f" * 64)
    c = reg.create("photos", "builtin")
    ids, vectors, codes, payloads = data(20)
    c.upsert(ids, vectors, codes, payloads)
    with pytest.raises(AlreadyExists):
        reg.create("photos", "builtin")
    with pytest.raises(InvalidInput, match="must be letters, digits and _"):
        reg.create("bad name!", "builtin")
    reg.close()
    again = Collections(tmp_path, D, K, "f" * 64)
    assert [x.spec.name for x in again.all()] == ["photos"] and again.get("photos").count() == 20
    other_model = Collections(tmp_path, D, K, "0" * 64)
    with pytest.raises(InvalidInput, match="holds vectors of model ffffffffffff"):
        other_model.get("photos")
    again.drop("photos")
    with pytest.raises(NotFound, match="no collection 'photos'"):
        again.get("photos")


def test_milvus_exact_search_equals_brute_force(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    reg = Collections(tmp_path, D, K, "f" * 64)
    c = reg.create("m", "milvus")
    ids, vectors, codes, payloads = data(300)
    c.upsert(ids, vectors, codes, payloads)
    assert c.count() == 300
    for q in data(3, seed=1)[1]:
        hits, _ = search(c, q, 10)
        assert [h.id for h in hits] == brute_force(vectors, ids, q, 10)
        assert [h.code for h in hits] == [int(codes[int(h.id[1:])]) for h in hits]
    routed, _ = search(c, q, 10, [2])
    inside = [i for i in range(300) if codes[i] == 2]
    assert [h.id for h in routed] == brute_force(vectors[inside], [ids[i] for i in inside], q, 10)
    assert c.delete(["r1", "nope"]) == 1 and c.count() == 299
    got = c.get(["r2"])["r2"]
    assert np.allclose(got[0], vectors[2]) and json.loads(got[1]) == {"i": 2}
    reg.drop("m")
    reg.close()
