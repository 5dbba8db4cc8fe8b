"""Search over gRPC: collections on a real server, both backends, bad input, and durability under
SIGKILL (every acknowledged upsert is found after a restart)."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from runtime.client import TesseraClient, query_item, vector_item
from runtime.launch import ServerProcess
from runtime.proto.tessera.v1 import tessera_pb2 as pb

D = 16  # the test bundle's embed_dim
UPSERTS_OK = 'tessera_requests_total{code="OK",method="Upsert",transport="grpc"}'


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    scores = [sum(float(a) * float(b) for a, b in zip(v, query, strict=True)) for v in vectors]
    return sorted(range(len(vectors)), key=lambda i: -scores[i])[:k]


@pytest.mark.parametrize("backend", ["builtin", "milvus"])
def test_search_by_vector_text_and_image(server: ServerProcess, backend: str) -> None:
    if backend == "milvus":
        pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    name = f"s_{backend}"
    vectors = unit_vectors(200, seed=1)
    with server.client() as client:
        fp = client.info().fingerprint
        info = client.create_collection(name, backend)
        assert (info.name, info.backend, info.count, info.dim) == (name, backend, 0, D)
        records = [(f"v{i}", vectors[i], {"i": i}) for i in range(200)]
        assert client.upsert(name, records, fingerprint=fp) == 200
        pixels = np.full((20, 20, 3), 200, np.uint8)
        assert client.upsert(name, [("text", "a red circle", {"kind": "text"}), ("img", pixels, None)]) == 2
        assert {c.name: c.count for c in client.list_collections()}[name] == 202
        for q in unit_vectors(3, seed=2):
            hits = client.search(name, q, top_k=10)
            embedded = np.concatenate(
                [vectors, client.embed([query_item("a red circle"), query_item(pixels)]).vectors]
            )
            want = [f"v{i}" if i < 200 else ("text", "img")[i - 200] for i in brute_force(embedded, q, 10)]
            assert [h[0] for h in hits] == want
        top = client.search(name, "a red circle", top_k=1)
        assert (
            top[0][0] == "text"
            and top[0][1] == pytest.approx(1.0, abs=1e-5)
            and top[0][2] == {"kind": "text"}
        )
        assert client.search(name, pixels, top_k=1)[0][0] == "img"
        routed = client.search(name, vectors[5], top_k=5, nprobe=8)  # K = 8: every list
        assert [h[0] for h in routed] == [h[0] for h in client.search(name, vectors[5], top_k=5)]
        one = client.stub.Search(
            pb.SearchRequest(collection=name, query=vector_item(vectors[5]), top_k=5, nprobe=1)
        )
        assert len({h.code for h in one.hits}) == 1  # one list: one code's records
        assert 0 < one.scored < 202 if backend == "builtin" else one.scored == -1  # Milvus cannot say
        by_text = pb.SearchRequest(collection=name, query=pb.Item(text="a red circle"), top_k=1)
        hit = client.stub.Search(by_text)
        assert hit.hits[0].code == client.lookup([query_item("a red circle")])[0][0][0]  # its top code
        assert client.delete(name, ["v5", "missing"]) == 1
        assert client.search(name, vectors[5], top_k=1)[0][0] != "v5"
        client.drop_collection(name)
        assert name not in {c.name for c in client.list_collections()}


def test_bad_search_input_is_refused_and_the_server_keeps_serving(server: ServerProcess) -> None:
    with server.client() as client:
        client.create_collection("bad_inputs")
        up, search, create = client.stub.Upsert, client.stub.Search, client.stub.CreateCollection
        bad = grpc.StatusCode.INVALID_ARGUMENT

        def upsert(**record: object) -> pb.UpsertRequest:
            return pb.UpsertRequest(collection="bad_inputs", records=[pb.Record(**record)])  # type: ignore[arg-type]

        def query(vector: np.ndarray, **kw: object) -> pb.SearchRequest:
            return pb.SearchRequest(collection="bad_inputs", query=vector_item(vector), **kw)  # type: ignore[arg-type]

        def packed(
            n_ids: int, rows: np.ndarray, payloads: tuple[str, ...] = (), fp: str = ""
        ) -> pb.UpsertRequest:
            data = np.asarray(rows, "<f4").tobytes()
            vectors = pb.VectorRecords(ids=[f"p{i}" for i in range(n_ids)], data=data, payloads_json=payloads,
                                       fingerprint=fp)  # fmt: skip
            return pb.UpsertRequest(collection="bad_inputs", records=[pb.Record(id="r", content=ones)],
                                    vectors=vectors)  # fmt: skip

        ones = vector_item(np.ones(D))
        nan_second = np.ones((2, D))
        nan_second[1, 3] = np.nan
        cases = [
            (up, packed(2, np.ones((3, D))), bad, "packed vectors: 192 bytes for 2 ids; expected 2 x 16"),
            (up, packed(2, nan_second), bad, "record 2: vector holds NaN"),  # numbered after `records`
            (up, packed(2, np.ones((2, D)), ("{}",)), bad, "packed vectors: 1 payloads for 2 ids"),
            (up, packed(1, np.ones((1, D)), fp="0" * 64), bad, "packed vectors from model 000000000000"),
            (up, packed(1, np.zeros((1, D))), bad, "record 1: the zero vector"),
            (search, pb.SearchRequest(collection="nope", query=pb.Item(text="x"), top_k=1),
             grpc.StatusCode.NOT_FOUND, "no collection 'nope'"),
            (up, pb.UpsertRequest(collection="nope", records=[pb.Record(id="a", content=ones)]),
             grpc.StatusCode.NOT_FOUND, "nope"),
            (up, upsert(id="a", content=vector_item(np.ones(D + 1))), bad,
             "record 0: vector of 68 bytes; expected 16 float32"),
            (up, upsert(id="", content=ones), bad, "record 0: empty id"),
            (up, upsert(id="a", content=ones, payload_json=json.dumps({"x": "y" * 70000})), bad,
             "payload of 70,009 bytes is over 65,536"),
            (up, upsert(id="a", content=ones, payload_json="{not json"), bad, "payload is not JSON"),
            (up, upsert(id="a", content=vector_item(np.ones(D), "0" * 64)), bad,
             "vector from model 000000000000"),
            (up, upsert(id="a"), bad, "record 0: no content"),
            (search, query(np.ones(D), top_k=0), bad, "top_k 0 must be between 1 and 1000"),
            (search, query(np.ones(D), top_k=10**6), bad, "top_k 1000000 must be between 1 and 1000"),
            (search, query(np.ones(D), top_k=1, nprobe=70_000), bad, "nprobe 70000 must be between 0"),
            (search, query(np.zeros(D), top_k=1), bad, "the zero vector"),
            (create, pb.CreateCollectionRequest(name="bad_inputs"), grpc.StatusCode.ALREADY_EXISTS, "exists"),
            (create, pb.CreateCollectionRequest(name="x", backend="faiss"), bad, "backend 'faiss'"),
        ]  # fmt: skip
        for call, request, code, message in cases:
            with pytest.raises(grpc.RpcError) as err:
                call(request, timeout=30)
            assert err.value.code() == code, (message, err.value.details())
            assert message in err.value.details()
            assert client.upsert("bad_inputs", [("fine", np.ones(D, np.float32), None)]) == 1
        client.drop_collection("bad_inputs")


def test_every_acknowledged_upsert_survives_sigkill(bundle: Path, tmp_path: Path) -> None:
    rng = random.Random(7)
    data_dir = tmp_path / "data"
    acked: dict[str, int] = {}
    vectors = unit_vectors(5000, seed=3)
    n = 0
    for round_ in range(3):
        server = ServerProcess(bundle, data_dir=data_dir)
        stop = threading.Event()
        with server.client() as client:
            if round_ == 0:
                client.create_collection("durable")

            def writer(client: TesseraClient = client, stop: threading.Event = stop) -> None:
                nonlocal n
                while not stop.is_set():
                    record_id = f"r{n}"
                    try:
                        client.upsert("durable", [(record_id, vectors[n], {"n": n})])
                    except grpc.RpcError:
                        return  # the server died under us: this one was never acknowledged
                    acked[record_id] = n
                    n += 1

            thread = threading.Thread(target=writer)
            thread.start()
            target, deadline = rng.randint(40, 120), time.monotonic() + 120
            while len(acked) < target:  # a random point in the write stream, not in wall time
                assert thread.is_alive() and time.monotonic() < deadline, f"{len(acked)} writes acknowledged"
                time.sleep(0.001)
            server.kill()  # SIGKILL mid-write most likely
            stop.set()
            thread.join(30)
    assert len(acked) > 30, "the writer made too little progress to test anything"
    server = ServerProcess(bundle, data_dir=data_dir)
    try:
        with server.client() as client:
            assert {c.name: c.count for c in client.list_collections()}["durable"] >= len(acked)
            for record_id, i in acked.items():
                hit_id, score, payload = client.search("durable", vectors[i], top_k=1)[0]
                assert (hit_id, payload) == (record_id, {"n": i})
                assert score == pytest.approx(1.0, abs=1e-5)
    finally:
        assert server.stop() == 0


def test_the_client_splits_and_pipelines_large_upserts(server: ServerProcess) -> None:
    vectors = unit_vectors(700, seed=7)
    with server.client() as client:
        client.create_collection("bulk_upsert")
        before = server.metrics().get(UPSERTS_OK, 0.0)
        records = [(f"v{i}", vectors[i], {"i": i}) for i in range(700)]
        assert client.upsert("bulk_upsert", records, batch_items=256, in_flight=3) == 700
        after = server.metrics()[UPSERTS_OK]
        assert after - before == 3  # 256 + 256 + 188 records
        assert {c.name: c.count for c in client.list_collections()}["bulk_upsert"] == 700
        client.create_collection("bulk_repeat")
        again = [(f"v{i % 5}", vectors[i], {"i": i}) for i in range(600)]  # repeated ids: in order
        assert client.upsert("bulk_repeat", again, batch_items=100, in_flight=4) == 600
        for j in range(5):
            last = max(i for i in range(600) if i % 5 == j)
            hit_id, score, payload = client.search("bulk_repeat", vectors[last], top_k=1)[0]
            assert (hit_id, payload) == (f"v{j}", {"i": last}) and score > 0.999
