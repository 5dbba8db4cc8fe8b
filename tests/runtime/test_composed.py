"""Composed queries, batches of queries and result pages, on a real server: a composed query equals
the search by the weighted sum of Embed's own vectors (computed here, float64 brute force), "more
like this" equals the search by the record's stored vector, a batch equals its queries sent one by
one, on gRPC, HTTP and the CLI; and a client built from the contract before these fields still
searches."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from runtime.client import Like, TesseraClient, image_item, query_item
from runtime.proto.tessera.v1 import tessera_pb2 as pb
from tests.runtime.conftest import Server
from tests.runtime.test_http import b64, encoded

N = 80


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int) -> list[tuple[str, float]]:
    scores = vectors.astype(np.float64) @ query.astype(np.float64)  # (N,)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
    return [(f"r{i}", float(scores[i])) for i in order]


def filled(client: TesseraClient, name: str) -> np.ndarray:
    """A collection of N unit vectors with payloads {"i", "half"}; returns the vectors (N, d)."""
    info = client.info()
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(N, info.embed_dim)).astype(np.float32)  # (N, d)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    client.create_collection(name)
    records = [(f"r{i}", vectors[i], {"i": i, "half": i < N // 2}) for i in range(N)]
    client.upsert(name, records, fingerprint=info.fingerprint)
    return vectors


def test_a_composed_query_is_the_weighted_sum_of_embeds_vectors(server: Server) -> None:
    png = encoded("PNG", seed=3)
    with server.client() as client, httpx.Client(base_url=server.http, timeout=30) as http:
        vectors = filled(client, "composed")
        text, image = client.embed([pb.Item(text="a red circle"), image_item(png)]).vectors
        raw = np.random.default_rng(5).normal(size=vectors.shape[1]).astype(np.float32)  # (d,) not unit
        total = (
            1.0 * text.astype(np.float64) - 0.5 * image + 0.3 * raw / np.linalg.norm(raw.astype(np.float64))
        )
        want = brute_force(vectors, total / np.linalg.norm(total), 10)

        parts = [("a red circle", 1.0), (png, -0.5), (raw, 0.3)]
        got = client.search("composed", parts, top_k=10)
        assert [h[0] for h in got] == [w[0] for w in want]
        assert np.allclose([h[1] for h in got], [w[1] for w in want], atol=1e-5)

        body = {
            "parts": [
                {"text": "a red circle"},
                {"image": b64(png), "weight": -0.5},
                {"vector": raw.tolist(), "weight": 0.3},
            ],
            "top_k": 10,
        }
        hits = http.post("/v1/collections/composed/search", json=body).json()["hits"]
        assert [h["id"] for h in hits] == [w[0] for w in want]

        # "more like this": a record's stored vector, alone or as a part
        like = client.search("composed", Like("r7"), top_k=5)
        assert like == client.search("composed", vectors[7], top_k=5) and like[0][0] == "r7"
        mixed = client.search("composed", [(Like("r7"), 1.0), ("a red circle", -0.25)], top_k=5)
        total = vectors[7].astype(np.float64) - 0.25 * text
        assert [h[0] for h in mixed] == [w[0] for w in brute_force(vectors, total / np.linalg.norm(total), 5)]
        body = {"parts": [{"record_id": "r7"}], "top_k": 5}
        assert [h["id"] for h in http.post("/v1/collections/composed/search", json=body).json()["hits"]] == [
            h[0] for h in like
        ]

        # Lookup answers composed queries with the codes of the same vector
        composed = pb.ComposedQuery(
            parts=[
                pb.QueryPart(record_id="r7"),
                pb.QueryPart(item=pb.Item(text="a red circle"), weight=-0.25),
            ]
        )
        looked = client.stub.Lookup(pb.LookupRequest(composed=[composed], top_k=3, collection="composed"))
        assert [c.id for c in looked.results[0].codes] == [
            c for c, _ in client.lookup(total[None].astype(np.float32), 3)[0]
        ]

        with pytest.raises(grpc.RpcError) as e:
            client.search("composed", [("a dog", 1.0), ("a dog", -1.0)])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "add up to (nearly) zero" in (
            e.value.details() or ""
        )
        with pytest.raises(grpc.RpcError) as e:
            client.search("composed", [(Like("nope"), 1.0)])
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "record 'nope' is not in 'composed'" in (
            e.value.details() or ""
        )
        refused = http.post(
            "/v1/collections/composed/search", json={"parts": [{"text": "x", "record_id": "r1"}]}
        )
        assert refused.status_code == 400 and "content or a record id" in refused.json()["error"]["message"]
        client.drop_collection("composed")


def test_a_batch_of_queries_and_pages_of_hits_equal_the_queries_one_by_one(server: Server) -> None:
    with server.client() as client, httpx.Client(base_url=server.http, timeout=30) as http:
        vectors = filled(client, "batch")
        queries = [
            {"query": vectors[1], "top_k": 4},
            {"query": "two green triangles", "top_k": 6, "where": {"half": True}},
            {"query": [(Like("r3"), 1.0), ("a red circle", 0.5)], "top_k": 3, "offset": 2},
            {"query": vectors[9], "top_k": 5, "nprobe": 2, "where": {"i": {"$gte": 40}}},
        ]
        one_by_one = [client.search("batch", **q) for q in queries]
        batch = client.search_many("batch", queries)  # scored together: the same up to float rounding
        assert [[(i, p) for i, _, p in hits] for hits in batch] == [
            [(i, p) for i, _, p in hits] for hits in one_by_one
        ]
        assert np.allclose(
            [s for hits in batch for _, s, _ in hits],
            [s for hits in one_by_one for _, s, _ in hits],
            atol=1e-5,
        )
        assert all(int(h[0][1:]) < N // 2 for h in one_by_one[1])

        first, second = (
            client.search("batch", vectors[2], top_k=5),
            client.search("batch", vectors[2], top_k=5, offset=5),
        )
        assert first + second == client.search("batch", vectors[2], top_k=10)

        body = {
            "queries": [
                {"query": {"vector": vectors[1].tolist()}, "top_k": 4},
                {"query": {"text": "two green triangles"}, "top_k": 6, "filter": {"half": True}},
            ]
        }
        results = http.post("/v1/collections/batch/search", json=body).json()["results"]
        assert [[h["id"] for h in r["hits"]] for r in results] == [
            [h[0] for h in one_by_one[i]] for i in (0, 1)
        ]
        over = http.post(
            "/v1/collections/batch/search", json={"query": {"text": "x"}, "top_k": 10, "offset": 995}
        )
        assert (
            over.status_code == 400
            and "offset 995 + top_k 10 must be at most 1000" in over.json()["error"]["message"]
        )
        both = {"query": {"text": "x"}, "queries": [{"query": {"text": "y"}}]}
        assert http.post("/v1/collections/batch/search", json=both).status_code == 400
        client.drop_collection("batch")


def test_the_cli_composes_a_query_from_parts_and_weights(server: Server) -> None:
    from tests.runtime.test_cli import cli, rows

    with server.client() as client:
        filled(client, "cli_parts")
        want = client.search("cli_parts", [("a red circle", 1.0), (Like("r4"), -0.5)], top_k=4)
        parts = ["--text", "a red circle", "--like", "r4", "--weight", "-0.5"]
        found = rows(cli(server, "search", "--collection", "cli_parts", *parts, "--top-k", "4", "--json"))
        assert [r["id"] for r in found] == [h[0] for h in want]
        client.drop_collection("cli_parts")


OLD_CONTRACT = """
syntax = "proto3";
package tessera_old.v1;
message RawImage { uint32 width = 1; uint32 height = 2; bytes rgb = 3; }
message Vector { bytes data = 1; string fingerprint = 2; }
message Item { oneof content { string text = 1; bytes image = 2; RawImage pixels = 3; Vector vector = 4; } }
message SearchRequest { string collection = 1; Item query = 2; uint32 top_k = 3; uint32 nprobe = 4; }
message Timings { float queue_ms = 1; float preprocess_ms = 2; float inference_ms = 3; float total_ms = 4; }
message Hit { string id = 1; float score = 2; string payload_json = 3; }
message SearchResponse {
  string fingerprint = 1; repeated Hit hits = 2; Timings timings = 3; int64 scored = 4;
}
"""  # SearchRequest and its reply as the first collections release had them (no filter, parts, batch)


def test_a_client_built_from_the_old_contract_still_searches(server: Server, tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) compiles the old contract")
    (tmp_path / "old.proto").write_text(OLD_CONTRACT)
    protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}", f"--python_out={tmp_path}"]
    subprocess.run([*protoc, "old.proto"], check=True)
    sys.path.insert(0, str(tmp_path))
    try:
        old = importlib.import_module("old_pb2")
    finally:
        sys.path.remove(str(tmp_path))
    with server.client() as client:
        vectors = filled(client, "old_client")
        channel = grpc.insecure_channel(server.target)
        search = channel.unary_unary(
            "/tessera.v1.Tessera/Search",
            request_serializer=old.SearchRequest.SerializeToString,
            response_deserializer=old.SearchResponse.FromString,
        )
        data = vectors[12].astype("<f4").tobytes()
        reply = search(
            old.SearchRequest(collection="old_client", query=old.Item(vector=old.Vector(data=data)), top_k=3)
        )
        assert [h.id for h in reply.hits] == [h[0] for h in client.search("old_client", vectors[12], top_k=3)]
        assert json.loads(reply.hits[0].payload_json) == {"i": 12, "half": True} and reply.scored == N
        channel.close()
        assert query_item("x").text == "x"
        client.drop_collection("old_client")
