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
        assert client.search(name, vectors[5], top_k=1, nprobe=1)[0][0] == "v5"  # its own list is probed
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

        ones = vector_item(np.ones(D))
        cases = [
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
            (search, query(np.ones(D), top_k=1, nprobe=9), bad, "nprobe 9 is over the 8 codebook lists"),
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
            time.sleep(rng.uniform(0.5, 1.5))
            server.kill()  # SIGKILL at a random moment, mid-write most likely
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
