"""The HTTP/JSON transport: one service under both transports, so HTTP gives gRPC's vectors (|Δ| =
0) for text, JPEG, PNG and raw pixels, gRPC's errors for the same bad input (as an HTTP status and
a JSON body naming the item), gRPC's collections, and the same metrics; OpenAI's own Python client
works against /v1/embeddings unchanged. A real `python -m runtime serve` on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from runtime.http_api import HTTP_STATUS
from runtime.proto.tessera.v1 import tessera_pb2 as pb
from tests.conftest import REPO_ROOT
from tests.runtime.conftest import Server
from tests.runtime.test_server import BAD

TEXTS = ["A red circle above a small blue square.", "two green triangles"]


def encoded(fmt: str, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def item_json(item: pb.Item) -> dict[str, Any]:
    """A protobuf item as the HTTP API writes it."""
    kind = item.WhichOneof("content")
    if kind == "text":
        return {"text": item.text}
    if kind == "image":
        return {"image": b64(item.image)}
    if kind == "pixels":
        return {
            "pixels": {"width": item.pixels.width, "height": item.pixels.height, "rgb": b64(item.pixels.rgb)}
        }
    if kind == "vector":
        return {"vector": b64(item.vector.data), "fingerprint": item.vector.fingerprint}
    return {}


def http_vectors(reply: httpx.Response) -> np.ndarray:
    assert reply.status_code == 200, reply.text
    return np.array([e["vector"] for e in reply.json()["embeddings"]], dtype=np.float32)  # (N, d)


def test_http_vectors_equal_grpc_for_text_jpeg_png_and_pixels(server: Server) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    items = [pb.Item(text=TEXTS[0]), pb.Item(image=encoded("JPEG")), pb.Item(image=encoded("PNG", 1)),
             pb.Item(pixels=pb.RawImage(width=20, height=30, rgb=pixels.tobytes()))]  # fmt: skip
    with server.client() as client, httpx.Client(base_url=server.http, timeout=30) as http:
        want = np.stack(
            [
                np.frombuffer(e.vector, "<f4")
                for e in client.stub.Embed(pb.EmbedRequest(items=items)).embeddings
            ]
        )
        got = http_vectors(http.post("/v1/embed", json={"items": [item_json(it) for it in items]}))
        assert np.array_equal(got, want)  # |Δ| = 0: the same service, batcher and engines
        as_base64 = http.post("/v1/embed", json={"items": [item_json(items[0])], "encoding_format": "base64"})
        assert np.array_equal(
            np.frombuffer(base64.b64decode(as_base64.json()["embeddings"][0]["vector"]), "<f4"), want[0]
        )
        codes = http.post("/v1/embed", json={"items": [item_json(items[0])], "top_codes": 3}).json()
        grpc_codes = client.stub.Embed(pb.EmbedRequest(items=items[:1], top_codes=3)).embeddings[0].codes
        assert [c["id"] for c in codes["embeddings"][0]["codes"]] == [c.id for c in grpc_codes]


def test_openai_client_embeds_texts_and_image_data_urls(server: Server) -> None:
    openai = pytest.importorskip("openai", reason="the dev extra's openai client is not installed")
    png = encoded("PNG", 2)
    items = [
        pb.Item(text=TEXTS[0]),
        pb.Item(text=TEXTS[1]),
        pb.Item(image=png),
    ]  # one request, one batch each
    with server.client() as client:
        reply = client.stub.Embed(pb.EmbedRequest(items=items))
        want = np.stack([np.frombuffer(e.vector, "<f4") for e in reply.embeddings])
    api = openai.OpenAI(base_url=f"{server.http}/v1", api_key="unused")
    reply = api.embeddings.create(model="tessera", input=[*TEXTS, f"data:image/png;base64,{b64(png)}"])
    got = np.array([d.embedding for d in reply.data], dtype=np.float32)
    assert np.array_equal(got, want)  # the client asked for base64 and decoded it
    assert [d.index for d in reply.data] == [0, 1, 2] and reply.model.startswith("tessera-")
    assert reply.usage.prompt_tokens > len(TEXTS) and reply.usage.total_tokens == reply.usage.prompt_tokens
    floats = api.embeddings.create(model="tessera", input=TEXTS, encoding_format="float")
    assert np.array_equal(np.array([d.embedding for d in floats.data], dtype=np.float32), want[:2])


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_grpcs_error_over_http(server: Server, case: str) -> None:
    request, message = BAD[case]
    body = {"items": [item_json(it) for it in request.items]}
    with server.client() as client, httpx.Client(base_url=server.http, timeout=30) as http:
        with pytest.raises(grpc.RpcError) as err:
            client.stub.Embed(request, timeout=30)
        reply = http.post("/v1/embed", json=body)
        error = reply.json()["error"]
        assert reply.status_code == HTTP_STATUS[err.value.code().name] == 400
        assert error["code"] == "INVALID_ARGUMENT" and message in error["message"]
        if case != "oversized message":  # the JSON body of the same items is longer: the limit names its size
            assert error["message"] == err.value.details()
        assert http_vectors(
            http.post("/v1/embed", json={"items": [{"text": "a good request right after"}]})
        ).shape == (1, 16)


def test_malformed_json_and_unknown_fields_are_400_naming_the_field(server: Server) -> None:
    with httpx.Client(base_url=server.http, timeout=30) as http:
        reply = http.post("/v1/embed", json={"items": [{"txt": "typo"}]})
        assert reply.status_code == 400 and "items.0.txt" in reply.json()["error"]["message"]
        reply = http.post("/v1/embed", content=b"{not json", headers={"content-type": "application/json"})
        assert reply.status_code == 400
        reply = http.post("/v1/embeddings", json={"input": ["data:image/png;base64,@@@"]})
        assert reply.status_code == 400 and "input 0" in reply.json()["error"]["message"]


def test_collections_over_http_answer_as_over_grpc(server: Server) -> None:
    v = np.random.default_rng(5).normal(size=16).astype(np.float32)
    with server.client() as client, httpx.Client(base_url=server.http, timeout=30) as http:
        created = http.post("/v1/collections", json={"name": "web"})
        assert created.status_code == 201 and created.json()["count"] == 0
        assert http.post("/v1/collections", json={"name": "web"}).status_code == 409
        records = [{"id": "t", "item": {"text": TEXTS[0]}, "payload": {"kind": "text", "n": [1, 2]}},
                   {"id": "v", "item": {"vector": v.tolist()}, "payload": "just a string"},
                   {"id": "p", "item": {"image": b64(encoded("PNG", 4))}}]  # fmt: skip
        assert http.post("/v1/collections/web/records", json={"records": records}).json()["upserted"] == 3
        hits = http.post("/v1/collections/web/search", json={"query": {"text": TEXTS[0]}, "top_k": 3}).json()
        grpc_hits = client.stub.Search(
            pb.SearchRequest(collection="web", query=pb.Item(text=TEXTS[0]), top_k=3)
        ).hits
        assert [(h["id"], h["score"], h["code"]) for h in hits["hits"]] == [
            (h.id, pytest.approx(h.score), h.code) for h in grpc_hits
        ]
        payloads = {h["id"]: h["payload"] for h in hits["hits"]}
        assert (
            payloads["t"] == {"kind": "text", "n": [1, 2]}
            and payloads["v"] == "just a string"
            and payloads["p"] == {}
        )
        assert http.post("/v1/collections/web/delete", json={"ids": ["v", "nope"]}).json() == {"deleted": 1}
        listed = {c["name"]: c["count"] for c in http.get("/v1/collections").json()["collections"]}
        assert listed["web"] == 2
        assert http.post("/v1/collections/none/search", json={"query": {"text": "x"}}).status_code == 404
        assert http.delete("/v1/collections/web").status_code == 200
        assert http.delete("/v1/collections/web").status_code == 404


def test_health_readiness_openapi_info_and_metrics(server: Server) -> None:
    before = server.metrics()
    with httpx.Client(base_url=server.http, timeout=30) as http:
        assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200
        paths = http.get("/openapi.json").json()["paths"]
        assert {"/v1/embeddings", "/v1/embed", "/v1/lookup", "/v1/collections/{name}/search"} <= set(paths)
        info = http.get("/v1/info").json()
        assert info["embed_dim"] == 16 and {e["modality"] for e in info["engines"]} == {"image", "text"}
        looked = http.post(
            "/v1/lookup", json={"items": [{"text": "a dog"}], "top_k": 2, "code_ids": [0]}
        ).json()
        assert len(looked["results"][0]) == 2 and len(looked["code_vectors"][0]) == 16
    after = server.metrics()
    key = 'tessera_requests_total{code="OK",method="Lookup",transport="http"}'
    assert after[key] - before.get(key, 0) == 1


def readme_block(heading: str) -> str:
    """The first ```bash block after `heading` in the README."""
    text = (REPO_ROOT / "README.md").read_text()
    after = text[text.index(heading) :]
    return after[after.index("```bash\n") + len("```bash\n") : after.index("\n```", after.index("```bash\n"))]


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("jq") is None, reason="needs curl and jq")
def test_the_readme_curl_examples_work_as_printed(server: Server) -> None:
    script = "set -euo pipefail\n" + readme_block("### HTTP/JSON")
    run = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TESSERA_HTTP": server.http})  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert '"status":"ready"}16\n' in out  # ready (printed without a newline), then a 16-dim embedding
    assert '"prompt_tokens"' in out and '"id":' in out.replace(" ", "")  # the image's usage; codes
    assert (
        '"name":"readme"' in out
        and '"upserted":1' in out
        and '"id": "d1"' in out
        and '"dropped":"readme"' in out
    )


def test_filtered_search_and_count_agree_on_grpc_http_and_the_cli(server: Server) -> None:
    """A filter on Search and Count: both transports and the CLI give the exact top hits of the
    matching records (brute force here), a bad filter is refused naming its part, and the server
    keeps serving."""
    from tests.runtime.test_cli import cli, rows

    rng = np.random.default_rng(39)
    vectors = rng.normal(size=(120, 16)).astype(np.float32)  # (N, d)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    payloads = [{"category": ["shoes", "bags", "hats"][i % 3], "price": i, "tags": ["red"] if i % 4 else []}
                for i in range(120)]  # fmt: skip
    flt = {"category": {"$in": ["shoes", "hats"]}, "price": {"$lt": 90}, "$not": {"tags": "red"}}
    inside = [
        i for i, p in enumerate(payloads) if p["category"] != "bags" and p["price"] < 90 and not p["tags"]
    ]
    q = vectors[7]
    want = [f"r{i}" for i in sorted(inside, key=lambda i: -float(np.dot(vectors[i].astype(float), q)))[:5]]
    with server.client() as client, httpx.Client(base_url=server.http, timeout=30) as http:
        fp = client.info().fingerprint
        client.create_collection("filtered")
        client.upsert("filtered", [(f"r{i}", vectors[i], payloads[i]) for i in range(120)], fingerprint=fp)
        assert [h[0] for h in client.search("filtered", q, top_k=5, where=flt)] == want
        routed = client.search("filtered", q, top_k=5, nprobe=1, where=flt)
        assert len(routed) == 5 and all(int(h[0][1:]) in inside for h in routed)  # probes past one list
        body = {"query": {"vector": q.tolist()}, "top_k": 5, "filter": flt}
        assert [
            h["id"] for h in http.post("/v1/collections/filtered/search", json=body).json()["hits"]
        ] == want
        assert client.count("filtered", flt) == len(inside) and client.count("filtered") == 120
        assert http.post("/v1/collections/filtered/count", json={"filter": flt}).json()["count"] == len(
            inside
        )
        bad = {"query": {"text": "x"}, "filter": {"price": {"$near": 3}}}
        refused = http.post("/v1/collections/filtered/search", json=bad)
        assert (
            refused.status_code == 400
            and "price.$near: unknown operator" in refused.json()["error"]["message"]
        )
        with pytest.raises(grpc.RpcError) as e:
            client.stub.Search(pb.SearchRequest(collection="filtered", query=pb.Item(text="x"), top_k=1,
                                                filter_json='{"$or": []}'))  # fmt: skip
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "$or: $or takes a non-empty list of filters" in (e.value.details() or "")
        counted = rows(
            cli(server, "count", "--collection", "filtered", "--filter", json.dumps(flt), "--json")
        )
        assert counted == [{"collection": "filtered", "count": len(inside)}]
        bags = ["--filter", '{"category": "bags"}', "--json"]
        found = rows(
            cli(server, "search", "--collection", "filtered", "--text", "a circle", "--top-k", "50", *bags)
        )
        assert found and all(r["payload"]["category"] == "bags" for r in found)
        client.drop_collection("filtered")


def test_get_list_and_delete_by_filter_agree_on_grpc_http_and_the_cli(server: Server) -> None:
    """Records by id (missing ones listed), the paged listing and delete by filter: the same
    answers on both transports and the CLI, against what the test wrote."""
    from tests.runtime.test_cli import cli, rows

    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(30, 16)).astype(np.float32)  # (N, d)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    payloads = [{"kind": "odd" if i % 2 else "even", "i": i} for i in range(30)]
    ids = [f"p{i:02d}" for i in range(30)]
    with server.client() as client, httpx.Client(base_url=server.http, timeout=30) as http:
        fp = client.info().fingerprint
        client.create_collection("records")
        client.upsert("records", list(zip(ids, vectors, payloads, strict=True)), fingerprint=fp)
        got, missing = client.get("records", ["p03", "zz", "p10"], with_vectors=True)
        assert missing == ["zz"] and got["p03"].payload == payloads[3]
        assert got["p10"].vector is not None and np.allclose(got["p10"].vector, vectors[10], atol=1e-6)
        body = {"ids": ["p03", "zz"], "with_vectors": True}
        reply = http.post("/v1/collections/records/get", json=body).json()
        assert reply["missing"] == ["zz"] and reply["records"][0]["payload"] == payloads[3]
        assert np.allclose(reply["records"][0]["vector"], vectors[3], atol=1e-6)
        assert reply["records"][0]["code"] == got["p03"].code

        assert [i for i, _ in client.records("records", page_size=7)] == ids
        odd = [i for i, p in zip(ids, payloads, strict=True) if p["kind"] == "odd"]
        assert [i for i, _ in client.records("records", {"kind": "odd"}, page_size=4)] == odd
        page = http.post("/v1/collections/records/list", json={"limit": 4, "filter": {"kind": "odd"}}).json()
        assert [r["id"] for r in page["records"]] == odd[:4] and page["next_cursor"] == odd[3]
        more = {"limit": 4, "filter": {"kind": "odd"}, "cursor": page["next_cursor"]}
        assert [
            r["id"] for r in http.post("/v1/collections/records/list", json=more).json()["records"]
        ] == odd[4:8]
        listed = rows(
            cli(server, "list", "--collection", "records", "--limit", "3", "--cursor", "p26", "--json")
        )
        assert [r.get("id") for r in listed] == ["p27", "p28", "p29", None] and listed[-1] == {
            "next_cursor": "p29"
        }
        shown = rows(cli(server, "get", "--collection", "records", "p01", "nope", "--json"))
        assert shown[0]["payload"] == payloads[1] and shown[1] == {"id": "nope", "missing": True}

        everything = http.post("/v1/collections/records/delete", json={"filter": {}})
        assert (
            everything.status_code == 400 and "drop the collection" in everything.json()["error"]["message"]
        )
        both = http.post("/v1/collections/records/delete", json={"ids": ["p01"], "filter": {"i": 1}})
        assert both.status_code == 400 and "not both" in both.json()["error"]["message"]
        assert http.post("/v1/collections/records/delete", json={"filter": {"i": {"$lt": 4}}}).json() == {
            "deleted": 4
        }
        assert client.delete("records", where={"kind": "odd"}) == len(odd) - 2
        deleted = rows(
            cli(server, "delete", "--collection", "records", "--filter", '{"i": {"$gte": 20}}', "--json")
        )
        assert deleted == [{"deleted": 5, "filter": {"i": {"$gte": 20}}}]
        left = [f"p{i:02d}" for i in range(4, 20, 2)]
        assert [i for i, _ in client.records("records")] == left and client.count("records") == len(left)
        client.drop_collection("records")
