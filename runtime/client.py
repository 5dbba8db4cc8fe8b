"""`TesseraClient`: the Python client of `tessera.v1.Tessera` (numpy in and out), and its CLI.

from runtime.client import TesseraClient
with TesseraClient("127.0.0.1:50051") as client:
    text_vecs = client.embed_texts(["a dog runs on grass"])        # (1, d) float32
    image_vecs = client.embed_images(["dog.jpg", pixels_hwc_uint8])  # paths, bytes or arrays
    codes = client.lookup(text_vecs, top_k=3)                         # [[(code id, score)]]

python -m runtime.client --help        # the command line over the whole API (runtime/cli.py)
"""

from __future__ import annotations

import json
import re
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.proto.tessera.v1 import tessera_pb2 as pb
from runtime.proto.tessera.v1 import tessera_pb2_grpc as pb_grpc

ImageLike = str | Path | bytes | np.ndarray  # a file, encoded bytes, or (H, W, 3) uint8 RGB pixels
Query = str | Path | bytes | np.ndarray  # a text (str), an image (path, bytes, pixels) or a 1-D vector
Codes = list[list[tuple[int, float]]]
PathLike = str | Path
UPSERT_ITEMS = 256  # records per Upsert request: the server's default limit
UPSERT_BYTES = 3 << 20  # and bytes, under its default max_request_bytes
UPSERT_IN_FLIGHT = 4  # requests outstanding at once: the server decodes one while storing another


@dataclass(frozen=True)
class EmbedReply:
    """A server's answer to one Embed request, as the client hands it on."""

    vectors: np.ndarray  # (N, d) float32, L2-normalised
    codes: Codes  # per item, (code id, cosine), best first; empty unless top_codes > 0
    fingerprint: str
    timings: pb.Timings


@dataclass(frozen=True)
class Like:
    """A stored record as a query part: its vector ("more like this")."""

    record_id: str


Composed = Sequence[tuple[Query | Like, float]]  # (part, weight): the weighted sum of the parts' unit vectors


def query_parts(parts: Composed, fingerprint: str = "") -> list[pb.QueryPart]:
    return [
        pb.QueryPart(record_id=p.record_id, weight=w)
        if isinstance(p, Like)
        else pb.QueryPart(item=query_item(p, fingerprint), weight=w)
        for p, w in parts
    ]


@dataclass(frozen=True)
class StoredRecord:
    payload: Any  # the parsed JSON payload
    code: int  # its top code
    vector: np.ndarray | None  # (d,) float32 where asked for


def stored_record(r: pb.StoredRecord) -> StoredRecord:
    vector = np.frombuffer(r.vector, dtype="<f4").copy() if r.vector else None  # (d,)
    return StoredRecord(json.loads(r.payload_json or "null"), r.code, vector)


def search_request(
    query: Query | Like | Composed, top_k: int = 10, nprobe: int = 0, fingerprint: str = "",
    where: dict | None = None, offset: int = 0,
) -> pb.SearchRequest:  # fmt: skip
    request = pb.SearchRequest(
        top_k=top_k, nprobe=nprobe, filter_json=json.dumps(where) if where else "", offset=offset
    )
    if isinstance(query, Like):
        request.parts.extend(query_parts([(query, 1.0)]))
    elif isinstance(query, list | tuple):
        request.parts.extend(query_parts(query, fingerprint))
    else:
        request.query.CopyFrom(query_item(query, fingerprint))
    return request


def image_item(image: ImageLike) -> pb.Item:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"pixels must be (H, W, 3) uint8 RGB, got {image.dtype} {image.shape}")
        h, w, _ = image.shape
        return pb.Item(pixels=pb.RawImage(width=w, height=h, rgb=np.ascontiguousarray(image).tobytes()))
    if isinstance(image, bytes):
        return pb.Item(image=image)
    return pb.Item(image=Path(image).read_bytes())


def query_item(query: Query, fingerprint: str = "") -> pb.Item:
    """A text (str), a vector (1-D float array) or an image (path, encoded bytes, (H, W, 3) pixels)."""
    if isinstance(query, str):
        return pb.Item(text=query)
    if isinstance(query, np.ndarray) and query.ndim == 1:
        return vector_item(query, fingerprint)
    return image_item(query)


def vector_item(vector: np.ndarray, fingerprint: str = "") -> pb.Item:
    data = np.asarray(vector, dtype="<f4").tobytes()
    return pb.Item(vector=pb.Vector(data=data, fingerprint=fingerprint))


def _packed_requests(
    collection: str, records: Sequence[tuple[str, Query, dict | None]], fingerprint: str, batch_items: int
) -> Iterator[pb.UpsertRequest]:
    """Vector records as VectorRecords: one buffer per request, not a message per record."""
    width = 4 * len(records[0][1]) + 64  # bytes a record costs, its id and payload roughly
    step = max(1, min(batch_items, UPSERT_BYTES // width))
    for s in range(0, len(records), step):
        chunk = records[s : s + step]
        payloads = [json.dumps(p) if p else "{}" for _, _, p in chunk] if any(p for _, _, p in chunk) else []
        data = np.stack([c for _, c, _ in chunk]).astype("<f4").tobytes()  # type: ignore[misc]  # (n, d)
        vectors = pb.VectorRecords(ids=[i for i, _, _ in chunk], data=data, payloads_json=payloads,
                                   fingerprint=fingerprint)  # fmt: skip
        yield pb.UpsertRequest(collection=collection, vectors=vectors)


def to_vectors(response: pb.EmbedResponse) -> np.ndarray:
    if not response.embeddings:
        return np.zeros((0, response.embed_dim), dtype=np.float32)
    return np.stack([np.frombuffer(e.vector, dtype="<f4") for e in response.embeddings])  # (N, d)


class _Key(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <key>` to every call (on plaintext channels too)."""

    def __init__(self, key: str) -> None:
        self.metadata = (("authorization", f"Bearer {key}"),)

    def _with_key(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *self.metadata))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_key(details), requests)


# Calls go round robin over every address of the target; one answered UNAVAILABLE (a replica
# draining, gone or not yet ready) is retried on the next. Every RPC but CreateCollection and
# DropCollection is idempotent, and those two are refused rather than doubled.
SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": "tessera.v1.Tessera"}],
        "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.05s", "maxBackoff": "1s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
})  # fmt: skip


def channel_target(target: str | Sequence[str]) -> str:
    """A gRPC target for one address, a `dns:///name:port` (every address the name resolves to, as
    a Kubernetes headless Service gives), or several IP:port addresses (a list, or comma-separated)."""
    parts = [t.strip() for t in (target.split(",") if isinstance(target, str) else target) if t.strip()]
    if len(parts) == 1:
        return parts[0]
    if not all(re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}:\d+", p) for p in parts):
        raise ValueError(
            f"several targets must be IPv4 address:port each (for names use dns:///name:port): {parts}"
        )
    return "ipv4:" + ",".join(parts)


class TesseraClient:
    def __init__(
        self, target: str | Sequence[str] = "127.0.0.1:50051", timeout_s: float = 30.0,
        max_message_mb: int = 64, tls_ca: PathLike | None = None, tls_cert: PathLike | None = None,
        tls_key: PathLike | None = None, api_key: str | None = None,
    ) -> None:  # fmt: skip
        """`target`: one replica, several, or a dns:/// name (channel_target). `tls_ca` (the server's
        CA) makes the channel TLS; `tls_cert` and `tls_key` add a client certificate (mTLS);
        `api_key` goes with every call."""
        target = channel_target(target)
        opts = [("grpc.max_send_message_length", max_message_mb << 20),
                ("grpc.max_receive_message_length", max_message_mb << 20),
                ("grpc.service_config", SERVICE_CONFIG), ("grpc.enable_retries", 1)]  # fmt: skip
        if tls_ca or tls_cert:
            read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
            creds = grpc.ssl_channel_credentials(read(tls_ca), read(tls_key), read(tls_cert))
            self.channel = grpc.secure_channel(target, creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(target, options=opts)
        if api_key:
            self.channel = grpc.intercept_channel(self.channel, _Key(api_key))
        self.stub = pb_grpc.TesseraStub(self.channel)
        self.timeout_s = timeout_s

    def __enter__(self) -> TesseraClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Blocks until the health service says SERVING (engines loaded and warm)."""
        import time

        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not SERVING after {timeout_s} s")
            time.sleep(0.1)

    def embed(self, items: Sequence[pb.Item], top_codes: int = 0) -> EmbedReply:
        response = self.stub.Embed(pb.EmbedRequest(items=items, top_codes=top_codes), timeout=self.timeout_s)
        codes = [[(c.id, c.score) for c in e.codes] for e in response.embeddings]
        return EmbedReply(to_vectors(response), codes, response.fingerprint, response.timings)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed([pb.Item(text=t) for t in texts]).vectors

    def embed_images(self, images: Sequence[ImageLike]) -> np.ndarray:
        return self.embed([image_item(i) for i in images]).vectors

    def embed_stream(self, batches: Iterator[Sequence[pb.Item]]) -> Iterator[np.ndarray]:
        """Bulk: one (n, d) array per batch of items, in order."""
        requests = (pb.EmbedRequest(items=b, request_id=str(i)) for i, b in enumerate(batches))
        for response in self.stub.EmbedStream(requests, timeout=None):
            yield to_vectors(response)

    def lookup(self, queries: Sequence[pb.Item] | np.ndarray, top_k: int = 1, fingerprint: str = "") -> Codes:
        """Top codes of items (texts, images) or of an (N, d) array of vectors."""
        if isinstance(queries, np.ndarray):
            items = [vector_item(v, fingerprint) for v in np.atleast_2d(queries)]
        else:
            items = list(queries)
        response = self.stub.Lookup(pb.LookupRequest(items=items, top_k=top_k), timeout=self.timeout_s)
        return [[(c.id, c.score) for c in r.codes] for r in response.results]

    def code_vectors(self, code_ids: Sequence[int]) -> np.ndarray:
        response = self.stub.Lookup(pb.LookupRequest(code_ids=code_ids), timeout=self.timeout_s)
        return np.stack([np.frombuffer(v, dtype="<f4") for v in response.code_vectors])  # (n, d)

    def info(self) -> pb.InfoResponse:
        return self.stub.Info(pb.InfoRequest(), timeout=self.timeout_s)

    # -- collections ------------------------------------------------------------------------------

    def create_collection(
        self, name: str, backend: str = "builtin", indexed_fields: Sequence[str] = ()
    ) -> pb.CollectionInfo:
        request = pb.CreateCollectionRequest(name=name, backend=backend, indexed_fields=indexed_fields)
        return self.stub.CreateCollection(request, timeout=self.timeout_s)

    def list_collections(self) -> list[pb.CollectionInfo]:
        return list(
            self.stub.ListCollections(pb.ListCollectionsRequest(), timeout=self.timeout_s).collections
        )

    def drop_collection(self, name: str) -> None:
        self.stub.DropCollection(pb.DropCollectionRequest(name=name), timeout=self.timeout_s)

    def upsert(
        self, collection: str, records: Sequence[tuple[str, Query, dict | None]], fingerprint: str = "",
        batch_items: int = UPSERT_ITEMS, in_flight: int = UPSERT_IN_FLIGHT,
    ) -> int:  # fmt: skip
        """records: (id, content, payload). Content: a text, an image (path, bytes, pixels) or a vector
        (a 1-D float array). Sent in requests of at most `batch_items` records and UPSERT_BYTES, up
        to `in_flight` of them at once where the ids are distinct (else one at a time, so the last
        record of an id wins). Durable when this returns; on an error, requests before it may be stored."""
        window = in_flight if len({r[0] for r in records}) == len(records) else 1
        pending: deque[grpc.Future] = deque()
        upserted = 0
        for request in self._upsert_requests(collection, records, fingerprint, batch_items):
            pending.append(self.stub.Upsert.future(request, timeout=self.timeout_s))
            if len(pending) >= window:
                upserted += pending.popleft().result().upserted
        while pending:
            upserted += pending.popleft().result().upserted
        return upserted

    @staticmethod
    def _upsert_requests(
        collection: str, records: Sequence[tuple[str, Query, dict | None]], fingerprint: str, batch_items: int
    ) -> Iterator[pb.UpsertRequest]:
        if records and all(isinstance(c, np.ndarray) and c.ndim == 1 for _, c, _ in records):
            yield from _packed_requests(collection, records, fingerprint, batch_items)
            return
        msgs: list[pb.Record] = []
        size = 0
        for record_id, content, payload in records:
            msg = pb.Record(
                id=record_id, content=query_item(content, fingerprint),
                payload_json=json.dumps(payload) if payload else "{}",
            )  # fmt: skip
            nbytes = msg.ByteSize()
            if msgs and (len(msgs) == batch_items or size + nbytes > UPSERT_BYTES):
                yield pb.UpsertRequest(collection=collection, records=msgs)
                msgs, size = [], 0
            msgs.append(msg)
            size += nbytes
        if msgs:
            yield pb.UpsertRequest(collection=collection, records=msgs)

    def load_vectors(
        self, location: str, collection: str, backend: str = "builtin",
        progress: Callable[[int, int, int], None] | None = None,
    ) -> int:  # fmt: skip
        """Every shard of a vectors folder (runtime/shards.py, from `python -m runtime.batch`) into
        `collection` (created with `backend` if missing), through packed Upserts; refuses vectors
        of another model than the server's. A re-run writes the same records again, which is
        harmless: an id's last write wins. progress: (items done, items in all, skipped)."""
        from runtime.shards import Folder, ShardError

        folder = Folder(location)
        job = folder.job()
        served = self.info().fingerprint
        if job.fingerprint != served:
            raise ShardError(f"{location}: vectors of model {job.fingerprint[:12]}…, the server serves "
                             f"{served[:12]}… (embed the corpus again with the server's bundle)")  # fmt: skip
        if collection not in {c.name for c in self.list_collections()}:
            self.create_collection(collection, backend)
        loaded = seen = skipped = 0
        for _, shard in folder.shards(job):
            payloads = [json.loads(p) for p in shard.payloads]
            records = list(zip(shard.ids, shard.vectors, payloads, strict=True))
            loaded += self.upsert(collection, records, fingerprint=job.fingerprint)
            seen, skipped = seen + len(records) + len(shard.skipped), skipped + len(shard.skipped)
            if progress:
                progress(seen, job.items, skipped)
        return loaded

    def count(self, collection: str, where: dict | None = None) -> int:
        """Records of the collection, all or those the filter `where` matches."""
        request = pb.CountRequest(collection=collection, filter_json=json.dumps(where) if where else "")
        return self.stub.Count(request, timeout=self.timeout_s).count

    def delete(self, collection: str, ids: Sequence[str] = (), where: dict | None = None) -> int:
        """The records named by `ids`, or every record the filter `where` matches; how many there were."""
        flt = json.dumps(where) if where else ""
        request = pb.DeleteRequest(collection=collection, ids=ids, filter_json=flt)
        return self.stub.Delete(request, timeout=self.timeout_s).deleted

    def get(
        self, collection: str, ids: Sequence[str], with_vectors: bool = False
    ) -> tuple[dict[str, StoredRecord], list[str]]:
        """(id -> its record, the ids the collection does not hold)."""
        request = pb.GetRequest(collection=collection, ids=ids, with_vectors=with_vectors)
        reply = self.stub.Get(request, timeout=self.timeout_s)
        return {r.id: stored_record(r) for r in reply.records}, list(reply.missing)

    def records(
        self, collection: str, where: dict | None = None, page_size: int = 100, with_vectors: bool = False
    ) -> Iterator[tuple[str, StoredRecord]]:
        """Every record (that `where` matches) in id order, a page per call: a record present for
        the whole walk is yielded exactly once, whatever is written meanwhile."""
        cursor, flt = "", json.dumps(where) if where else ""
        while True:
            request = pb.ListRecordsRequest(
                collection=collection, limit=page_size, cursor=cursor, filter_json=flt,
                with_vectors=with_vectors,
            )  # fmt: skip
            reply = self.stub.ListRecords(request, timeout=self.timeout_s)
            yield from ((r.id, stored_record(r)) for r in reply.records)
            if not reply.next_cursor:
                return
            cursor = reply.next_cursor

    def search(
        self, collection: str, query: Query | Like | Composed, top_k: int = 10, nprobe: int = 0,
        fingerprint: str = "", where: dict | None = None, offset: int = 0,
    ) -> list[tuple[str, float, dict]]:  # fmt: skip
        """(id, cosine, payload) best first; nprobe = 0: exact, else its nprobe best lists (and more
        where a filter needs them); `where`: a payload filter (runtime/index/filters.py). `query`
        is a text, image or vector, Like(record id), or a list of (any of those, weight)."""
        request = search_request(query, top_k, nprobe, fingerprint, where, offset)
        request.collection = collection
        reply = self.stub.Search(request, timeout=self.timeout_s)
        return [(h.id, h.score, json.loads(h.payload_json)) for h in reply.hits]

    def search_many(
        self, collection: str, queries: Sequence[dict[str, Any]], fingerprint: str = ""
    ) -> list[list[tuple[str, float, dict]]]:
        """Many queries in one call, each a dict of search's arguments (query, top_k, nprobe, where,
        offset); their answers in order."""
        batch = [search_request(fingerprint=fingerprint, **q) for q in queries]
        request = pb.SearchRequest(collection=collection)
        for r in batch:  # the same fields, one query of the batch each
            one = request.queries.add(
                top_k=r.top_k, nprobe=r.nprobe, filter_json=r.filter_json, offset=r.offset
            )
            one.parts.extend(r.parts)
            if r.HasField("query"):
                one.query.CopyFrom(r.query)
        reply = self.stub.Search(request, timeout=self.timeout_s)
        return [[(h.id, h.score, json.loads(h.payload_json)) for h in r.hits] for r in reply.results]


if __name__ == "__main__":  # the command line lives in runtime/cli.py
    from runtime.cli import main

    sys.exit(main())
