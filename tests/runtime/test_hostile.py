"""The hostile suite (slow): a real server under fuzzed requests of every RPC, kill -9 in the middle
of large and small upserts, and writers racing DropCollection. Nothing may answer INTERNAL or
UNKNOWN, no acknowledged write may be lost, no restart may need --repair-wal, and no write may land
in another collection."""

from __future__ import annotations

import io
import json
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor as pd
from PIL import Image

from runtime.client import vector_item
from runtime.proto.tessera.v1 import tessera_pb2 as pb
from tests.runtime.conftest import Server

pytestmark = [pytest.mark.slow, pytest.mark.integration]
FUZZ_PER_RPC = 2000
KILL_TRIALS = 20
DROP_RACES = 50
BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


def png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


def valid_requests(dim: int) -> dict[str, list[Any]]:
    """A few valid requests of each RPC, the fuzzer's seeds."""
    v = np.random.default_rng(0).normal(size=dim).astype(np.float32)
    items = [pb.Item(text="a red circle"), pb.Item(image=png_bytes(0)),
             pb.Item(pixels=pb.RawImage(width=4, height=4, rgb=bytes(48)))]  # fmt: skip
    record = pb.Record(id="r1", content=pb.Item(text="two squares"), payload_json='{"k": [1, 2]}')
    return {
        "Embed": [pb.EmbedRequest(items=items, top_codes=2, request_id="x")],
        "EmbedStream": [pb.EmbedRequest(items=items[:1])],
        "Lookup": [
            pb.LookupRequest(items=[items[0], vector_item(v)], top_k=2, code_ids=[0, 1]),
            pb.LookupRequest(
                composed=[
                    pb.ComposedQuery(
                        parts=[pb.QueryPart(item=items[0]), pb.QueryPart(record_id="r1", weight=-0.5)]
                    )
                ],
                collection="fuzz",
            ),
        ],
        "Info": [pb.InfoRequest()],
        "Upsert": [
            pb.UpsertRequest(collection="fuzz", records=[record, pb.Record(id="r2", content=vector_item(v))])
        ],
        "Delete": [
            pb.DeleteRequest(collection="fuzz", ids=["r1", "nope"]),
            pb.DeleteRequest(collection="fuzz", filter_json='{"k": {"$gt": 5}}'),
        ],
        "Get": [pb.GetRequest(collection="fuzz", ids=["r1", "r2", "nope"], with_vectors=True)],
        "ListRecords": [
            pb.ListRecordsRequest(collection="fuzz", limit=2, cursor="r1", filter_json='{"k": 1}')
        ],
        "Search": [
            pb.SearchRequest(collection="fuzz", query=items[0], top_k=3, nprobe=2),
            pb.SearchRequest(
                collection="fuzz", query=items[0], top_k=3, filter_json='{"k": {"$in": [1, "a"]}}'
            ),
            pb.SearchRequest(
                collection="fuzz",
                top_k=2,
                offset=1,
                parts=[pb.QueryPart(item=items[1], weight=0.7), pb.QueryPart(record_id="r2")],
            ),
            pb.SearchRequest(
                collection="fuzz",
                queries=[
                    pb.SearchQuery(query=items[0], top_k=2, filter_json='{"k": 1}'),
                    pb.SearchQuery(parts=[pb.QueryPart(record_id="r1")], nprobe=1),
                ],
            ),
        ],
        "Count": [
            pb.CountRequest(collection="fuzz", filter_json='{"$or": [{"k": 1}, {"k": {"$exists": false}}]}')
        ],
        "CreateCollection": [
            pb.CreateCollectionRequest(name="fz_new", backend="builtin"),
            pb.CreateCollectionRequest(name="fz_idx", indexed_fields=["k", "a.b"]),
        ],
        "ListCollections": [pb.ListCollectionsRequest()],
        "DropCollection": [pb.DropCollectionRequest(name="fz_gone")],
    }


INTS = [0, 1, -1, 2, 7, 255, 256, 1000, 1001, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63)]


def random_value(field: pd.FieldDescriptor, rng: random.Random, depth: int) -> Any:
    t = field.type
    if t == pd.FieldDescriptor.TYPE_MESSAGE:
        return random_message(field.message_type._concrete_class, rng, depth + 1)
    if t == pd.FieldDescriptor.TYPE_STRING:
        return rng.choice(["", "a", "fuzz", "a\n", "x" * rng.randint(0, 5000), "{}", '{"a": NaN}',
                           "[" * 40 + "]" * 40, "ünïcødé ✓", "\x00", "r1"])  # fmt: skip
    if t == pd.FieldDescriptor.TYPE_BYTES:
        cut_png = png_bytes(rng.randint(0, 9))[: rng.randint(8, 400)]
        noise = bytes(rng.getrandbits(8) for _ in range(64))
        return rng.choice(
            [b"", b"\x00" * rng.randint(1, 300), noise, cut_png, png_bytes(1), b"\x89PNG\r\n\x1a\n"]
        )
    if t == pd.FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t in (pd.FieldDescriptor.TYPE_FLOAT, pd.FieldDescriptor.TYPE_DOUBLE):
        return rng.choice([0.0, -1.0, 1e30, float("nan"), float("inf")])
    unsigned = t in (
        pd.FieldDescriptor.TYPE_UINT32,
        pd.FieldDescriptor.TYPE_UINT64,
        pd.FieldDescriptor.TYPE_FIXED32,
    )
    bits = 64 if t in (pd.FieldDescriptor.TYPE_INT64, pd.FieldDescriptor.TYPE_UINT64) else 32
    lo, hi = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return min(hi, max(lo, rng.choice(INTS)))


def random_message(cls: Any, rng: random.Random, depth: int = 0) -> Any:
    """A message of `cls` with random values in random fields (nested to depth 3)."""
    message = cls()
    for field in cls.DESCRIPTOR.fields:
        if depth > 3 or rng.random() < 0.4:
            continue
        if field.is_repeated:
            for _ in range(rng.randint(0, 3)):
                value = random_value(field, rng, depth)
                container = getattr(message, field.name)
                (container.add().CopyFrom(value) if field.type == pd.FieldDescriptor.TYPE_MESSAGE
                 else container.append(value))  # fmt: skip
        elif field.type == pd.FieldDescriptor.TYPE_MESSAGE:
            getattr(message, field.name).CopyFrom(random_value(field, rng, depth))
        else:
            setattr(message, field.name, random_value(field, rng, depth))
    return message


def mutated(data: bytes, rng: random.Random) -> bytes:
    raw = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(4)
        if op == 0 and raw:
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        elif op == 1 and raw:
            del raw[rng.randrange(len(raw)) :]
        elif op == 2:
            at = rng.randrange(len(raw) + 1)
            raw[at:at] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
        elif raw:
            a = rng.randrange(len(raw))
            raw[a:a] = raw[a : a + rng.randint(1, 32)]
    return bytes(raw)


def fuzz_inputs(method: str, seeds: list[Any], n: int, rng: random.Random) -> list[bytes]:
    out = []
    cls = type(seeds[0])
    for i in range(n):
        if i % 2:
            out.append(mutated(rng.choice(seeds).SerializeToString(), rng))
        else:
            out.append(random_message(cls, rng).SerializeToString())
    return out


def test_fuzzed_requests_of_every_rpc_never_answer_internal_or_unknown(bundle: Path, tmp_path: Path) -> None:
    s = Server(bundle, data_dir=tmp_path)
    rng = random.Random(0)
    try:
        with s.client() as client:
            client.create_collection("fuzz")
            seeds = valid_requests(client.info().embed_dim)
            seen: dict[str, Counter[str]] = {}
            for method, requests in seeds.items():
                codes: Counter[str] = Counter()
                inputs = fuzz_inputs(method, requests, FUZZ_PER_RPC, rng)
                path = f"/tessera.v1.Tessera/{method}"
                if method == "EmbedStream":
                    call = client.channel.stream_stream(path)
                    for data in inputs[: FUZZ_PER_RPC // 4]:  # each a whole stream: fewer, slower
                        try:
                            list(call(iter([data, data]), timeout=30))
                            codes["OK"] += 1
                        except grpc.RpcError as e:
                            codes[e.code().name] += 1
                else:
                    call = client.channel.unary_unary(path)
                    for i in range(0, len(inputs), 50):
                        for future in [call.future(d, timeout=30) for d in inputs[i : i + 50]]:
                            try:
                                future.result()
                                codes["OK"] += 1
                            except grpc.RpcError as e:
                                codes[e.code().name] += 1
                seen[method] = codes
                assert not {c for c in codes if grpc.StatusCode[c] in BAD}, f"{method}: {dict(codes)}"
            assert client.embed_texts(["still serving"]).shape[0] == 1
        assert not any("Traceback" in line for line in s.lines), "".join(s.lines[-40:])
        assert all(sum(c.values()) > 0 for c in seen.values())
    finally:
        assert s.stop() == 0


def test_kill_9_during_large_and_small_upserts_loses_no_acknowledged_write(
    bundle: Path, tmp_path: Path
) -> None:
    """Each trial kills the server in the middle of a stream of upserts, restarts it on the same
    data (no --repair-wal) and finds every acknowledged record, by its vector, with its payload."""
    flags = ("--max-request-bytes", str(16 << 20), "--max-inflight-mb", "1024", "--stream-window-mb", "64")
    acknowledged: dict[str, str] = {}  # id -> payload
    vectors: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)
    dim = 0
    for trial in range(KILL_TRIALS):
        s = Server(bundle, *flags, data_dir=tmp_path)
        large = trial % 2 == 0  # ~12 MB log records: 180 records of 64 KB payloads
        with s.client(timeout_s=60) as client:
            dim = client.info().embed_dim
            if trial == 0:
                client.create_collection("durable")
            stop = threading.Event()

            def write(
                client: Any = client,
                trial: int = trial,
                large: bool = large,
                stop: threading.Event = stop,
                dim: int = dim,
            ) -> None:
                batch = 0
                while not stop.is_set():
                    n = 180 if large else 5
                    ids = [f"t{trial}-b{batch}-{i}" for i in range(n)]
                    vs = rng.normal(size=(n, dim)).astype(np.float32)
                    payloads = [json.dumps({"t": trial, "pad": "p" * (64_000 if large else 10)}) for _ in ids]
                    records = [pb.Record(id=i, content=vector_item(v), payload_json=p)
                               for i, v, p in zip(ids, vs, payloads, strict=True)]  # fmt: skip
                    try:
                        client.stub.Upsert(
                            pb.UpsertRequest(collection="durable", records=records), timeout=60
                        )
                    except grpc.RpcError:
                        return  # the kill
                    for i, v, p in zip(ids, vs, payloads, strict=True):
                        acknowledged[i], vectors[i] = p, v
                    batch += 1

            writer = threading.Thread(target=write)
            writer.start()
            time.sleep(0.3 + 0.7 * random.Random(trial).random())
            s.kill()
            stop.set()
            writer.join(60)
        again = Server(bundle, *flags, data_dir=tmp_path)  # must start without --repair-wal
        try:
            with again.client(timeout_s=60) as client:
                (info,) = [c for c in client.list_collections() if c.name == "durable"]
                assert info.count >= len(acknowledged)
                sample = random.Random(trial).sample(sorted(acknowledged), min(20, len(acknowledged)))
                for record_id in sample:
                    query = pb.SearchRequest(
                        collection="durable", query=vector_item(vectors[record_id]), top_k=1
                    )
                    (hit,) = client.stub.Search(query, timeout=60).hits
                    assert hit.id == record_id and hit.payload_json == acknowledged[record_id]
        finally:
            assert again.stop() == 0
        assert not any("--repair-wal" in line for line in again.lines)


def test_writers_racing_drop_and_create_never_land_in_another_collection(
    bundle: Path, tmp_path: Path
) -> None:
    s = Server(bundle, data_dir=tmp_path)
    try:
        with s.client() as client:
            dim = client.info().embed_dim
            v = np.random.default_rng(1).normal(size=dim).astype(np.float32)
            for race in range(DROP_RACES):
                client.create_collection(f"a{race}")
                codes: Counter[str] = Counter()

                def write(name: str = f"a{race}", codes: Counter[str] = codes) -> None:
                    for i in range(200):
                        request = pb.UpsertRequest(
                            collection=name, records=[pb.Record(id=f"w{i}", content=vector_item(v))]
                        )
                        try:
                            client.stub.Upsert(request, timeout=30)
                            codes["OK"] += 1
                        except grpc.RpcError as e:
                            codes[e.code().name] += 1
                            if e.code() == grpc.StatusCode.NOT_FOUND:
                                return

                writers = [threading.Thread(target=write) for _ in range(3)]
                for w in writers:
                    w.start()
                time.sleep(0.02)
                client.stub.DropCollection(pb.DropCollectionRequest(name=f"a{race}"), timeout=30)
                client.create_collection(f"b{race}")
                for w in writers:
                    w.join(60)
                assert set(codes) <= {"OK", "NOT_FOUND"}, dict(codes)
                counts = {c.name: c.count for c in client.list_collections()}
                assert counts[f"b{race}"] == 0 and f"a{race}" not in counts
    finally:
        assert s.stop() == 0
    again = Server(bundle, data_dir=tmp_path)
    try:
        with again.client() as client:
            assert {c.name: c.count for c in client.list_collections()} == {
                f"b{r}": 0 for r in range(DROP_RACES)
            }
    finally:
        assert again.stop() == 0
