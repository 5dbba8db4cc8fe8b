"""The collection RPCs (DESIGN.md §5 Search): Upsert, Delete, Search and collection management,
mixed into `runtime.server.Servicer`. Content goes through the same batcher as Embed; vectors are
checked for dimension and model, and normalised; each record lives in the list of its top code.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import numpy as np

from runtime.embedder import top_codes
from runtime.errors import InvalidInput
from runtime.index.base import check_id, check_payload, check_top_k
from runtime.index.registry import Collections
from runtime.proto.tessera.v1 import tessera_pb2 as pb
from runtime.rpc import content_of, deadline_of, rpc, timings_of


class SearchRpcs:
    """Needs from the servicer: embedder, collections, _admit, _vector."""

    embedder: Any
    collections: Collections | None

    @rpc
    async def Upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.UpsertResponse:
        t0 = time.perf_counter()
        with self._admit(request, len(request.records), [r.content for r in request.records]):
            collection = self._collections().get(request.collection)
            ids = [check_id(i, r.id) for i, r in enumerate(request.records)]
            payloads = [check_payload(i, r.payload_json) for i, r in enumerate(request.records)]
            for i, r in enumerate(request.records):
                if not r.HasField("content"):
                    raise InvalidInput(f"record {i}: no content (set text, image, pixels or vector)")
            vectors, codes, timings = await self._vectors(
                [r.content for r in request.records], context, "record"
            )
            await asyncio.to_thread(collection.upsert, ids, vectors, codes, payloads)
            timings.total_ms = 1e3 * (time.perf_counter() - t0)
            return pb.UpsertResponse(
                fingerprint=self.embedder.fingerprint, upserted=len(ids), timings=timings
            )

    @rpc
    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        with self._admit(request, len(request.ids)):
            collection = self._collections().get(request.collection)
            t0 = time.perf_counter()
            ids = [check_id(i, record_id) for i, record_id in enumerate(request.ids)]
            deleted = await asyncio.to_thread(collection.delete, ids)
            timings = pb.Timings(total_ms=1e3 * (time.perf_counter() - t0))
            return pb.DeleteResponse(deleted=deleted, fingerprint=self.embedder.fingerprint, timings=timings)

    @rpc
    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        t0 = time.perf_counter()
        with self._admit(request, 1 if request.HasField("query") else 0, [request.query]):
            collection = self._collections().get(request.collection)
            top_k = check_top_k(request.top_k)
            k = self.embedder.codebook.shape[0]
            if request.nprobe > k:
                raise InvalidInput(
                    f"nprobe {request.nprobe} is over the {k} codebook lists (0 = exact search)"
                )
            vectors, _, timings, scores = await self._vectors(
                [request.query], context, "query", with_scores=True
            )
            probe = None if request.nprobe == 0 else top_codes(scores, request.nprobe)[0][0]  # (nprobe,)
            hits, scored = await asyncio.to_thread(collection.search, vectors[0], top_k, probe)
            timings.total_ms = 1e3 * (time.perf_counter() - t0)
            return pb.SearchResponse(
                fingerprint=self.embedder.fingerprint, timings=timings, scored=scored,
                hits=[pb.Hit(id=h.id, score=h.score, payload_json=h.payload) for h in hits],
            )  # fmt: skip

    @rpc
    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CollectionInfo:
        with self._admit(request, 1):
            collection = await asyncio.to_thread(self._collections().create, request.name, request.backend)
            return collection_info(collection)

    @rpc
    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCollectionsResponse:
        with self._admit(request, 1):
            infos = await asyncio.to_thread(lambda: [collection_info(c) for c in self._collections().list()])
            return pb.ListCollectionsResponse(collections=infos)

    @rpc
    async def DropCollection(
        self, request: pb.DropCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DropCollectionResponse:
        with self._admit(request, 1):
            await asyncio.to_thread(self._collections().drop, request.name)
            return pb.DropCollectionResponse()

    def _collections(self) -> Collections:
        assert self.collections is not None, "opened before SERVING"
        return self.collections

    async def _vectors(
        self, items: list[pb.Item], context: grpc.aio.ServicerContext, what: str, with_scores: bool = False
    ) -> Any:
        """Items (content or vectors) -> (unit vectors (N, d), top codes (N,), timings[, code scores])."""
        n, d = len(items), self.embedder.embed_dim
        vectors = np.zeros((n, d), dtype=np.float32)  # (N, d)
        scores = np.zeros((n, self.embedder.codebook.shape[0]), dtype=np.float32)  # (N, K)
        given = [i for i, it in enumerate(items) if it.HasField("vector")]
        for i in given:
            vectors[i] = self._vector(i, items[i].vector, what)  # checked, unit length
        if given:
            scores[given] = self.embedder.vector_scores(vectors[given])
        content = [i for i in range(n) if not items[i].HasField("vector")]
        timings = pb.Timings()
        if content:
            out = await self.embedder.embed(
                [content_of(i, items[i], what) for i in content], deadline_of(context)
            )
            vectors[content], scores[content] = out.embeddings, out.code_scores
            timings = timings_of(out)
        codes = scores.argmax(axis=1).astype(np.int32)  # (N,) the list each vector lives in
        return (vectors, codes, timings, scores) if with_scores else (vectors, codes, timings)


def collection_info(c: Any) -> pb.CollectionInfo:
    s = c.spec
    return pb.CollectionInfo(
        name=s.name, backend=s.backend, count=c.count(), dim=s.dim, fingerprint=s.fingerprint
    )
