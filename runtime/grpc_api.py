"""The gRPC transport of the service (runtime/service.py): `tessera.v1.Tessera` messages in and out.

Each method turns its request into the service's values (`query_of`), admits it and calls the
service, and builds the reply; errors, metrics and the read-after-reserve admission are the `rpc`
decorator's (runtime/rpc.py), the one path every unary method takes. EmbedStream keeps what is the
transport's own: its window of the in-flight budget, and replies in request order; it counts its
outcome with the same metric, by its real status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict

import grpc
import numpy as np

from runtime.admission import MB, Budget, Reservation, receive_cost
from runtime.embedder import Content
from runtime.errors import InvalidInput, TesseraError, shown
from runtime.index.base import Hit, Stored
from runtime.metrics import Metrics
from runtime.proto.tessera.v1 import tessera_pb2 as pb
from runtime.proto.tessera.v1 import tessera_pb2_grpc as pb_grpc
from runtime.rpc import (
    content_of,
    deadline_of,
    decoded,
    log,
    read_one,
    rpc,
    status_message,
    status_of,
    wire_size,
)  # fmt: skip
from runtime.service import (
    Codes,
    CollectionSummary,
    Embedded,
    EngineSummary,
    PackedVectors,
    Part,
    Query,
    Record,
    SearchQuery,
    Service,
    Timings,
    Vector,
)

DEFAULT_PAGE = 100  # records per listing page where the request leaves limit 0
STREAM_END_GRACE_S = 0.01  # a stream waits this after its last request for a cancel behind it (EmbedStream)


class Servicer(pb_grpc.TesseraServicer):
    def __init__(self, service: Service, metrics: Metrics) -> None:
        self.service, self.metrics = service, metrics

    @property
    def fingerprint(self) -> str:
        return self.service.embedder.fingerprint

    @rpc
    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        items = [content_of(i, item) for i, item in enumerate(request.items)]
        async with self.service.admit(len(items), wire_size(request), items):
            out = await self.service.embed(items, request.top_codes, deadline_of(context))
        return self._embedded(out, request.request_id)

    async def EmbedStream(
        self, request_iterator: AsyncIterator[pb.EmbedRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EmbedResponse]:
        """Pipelined within the stream's window of the in-flight budget (runtime/admission.py): the
        next request is read while the largest a request may be fits in the window, computed
        meanwhile, and answered in order; an error ends the stream with its status, naming the
        request_id."""
        service = self.service
        t0, code = time.perf_counter(), grpc.StatusCode.OK
        recorded = False

        def record(name: str) -> None:  # once per stream, by whichever sees its end first
            nonlocal recorded
            if not recorded:
                recorded = True
                self.metrics.rpc_done("EmbedStream", name, time.perf_counter() - t0)

        # A client that cancels while this generator waits at a `yield` never resumes it: gRPC
        # abandons the generator, whose clean-up runs whenever it is collected. The RPC's own end
        # is the moment to count the cancellation.
        context.add_done_callback(lambda ctx: record("CANCELLED") if ctx.cancelled() else None)
        window = Budget(service.cfg.stream_window_mb * MB, "this stream's window")
        most = receive_cost(service.cfg.max_request_bytes)
        answers: asyncio.Queue[tuple[str, Reservation | None, asyncio.Future[pb.EmbedResponse]] | None]
        answers = asyncio.Queue()

        async def answer(request: pb.EmbedRequest, items: list[Content]) -> pb.EmbedResponse:
            out = await service.embed(items, request.top_codes, deadline_of(context))
            return self._embedded(out, request.request_id)

        async def read() -> None:
            """Reads requests while they fit the window, large ones at the heavy-read rate; any
            failure becomes the next answer."""
            requests, request_id, sender = request_iterator.__aiter__(), "", f"stream {id(window)}"
            try:
                while True:
                    room = await window.take(most, "the next request", None)
                    try:
                        message = await read_one(service.heavy, sender, requests)
                        if message is None:
                            raise StopAsyncIteration
                        request = decoded(message)
                        request_id = request.request_id
                        items = [content_of(i, item) for i, item in enumerate(request.items)]
                        cost = service.check(len(items), wire_size(request), items)
                        await room.grow_to(cost, "a request", None)
                    except BaseException:  # StopAsyncIteration included: the room is not needed
                        room.release()
                        raise
                    await answers.put((request_id, room, asyncio.ensure_future(answer(request, items))))
            except StopAsyncIteration:
                # A client's cancel can reach us first as the end of its requests, the way a
                # half-close does, and the cancellation itself a moment later; a stream that ends
                # waits that moment, so that it is not counted as answered in full.
                await asyncio.sleep(STREAM_END_GRACE_S)
                await answers.put(None)
            except Exception as e:  # a bad request, a refusal, a crash: the stream ends with it
                failed: asyncio.Future[pb.EmbedResponse] = asyncio.get_running_loop().create_future()
                failed.set_exception(e)
                await answers.put((request_id, None, failed))
            finally:
                if service.heavy is not None:
                    service.heavy.forget(sender)

        reader: asyncio.Future[None] | None = None
        failure = ""
        request_id = ""  # of the answer being awaited, for the error's message
        try:
            with (
                service.streams.reserve(window.capacity, "a new stream"),
                service.budget.reserve(window.capacity, "a new stream"),
            ):
                reader = asyncio.ensure_future(read())
                while (entry := await answers.get()) is not None:
                    request_id, room, task = entry
                    try:
                        yield await task
                    finally:
                        if room is not None:
                            room.release()
        except TesseraError as e:
            code = status_of(e)
            which = f"request {shown(request_id)}: " if request_id else ""
            failure = status_message(f"{which}{e}")
        except (asyncio.CancelledError, GeneratorExit):  # a client gone while we wait, or while we yield
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:
            code, failure = grpc.StatusCode.INTERNAL, "internal error in EmbedStream"
            log.exception("EmbedStream failed")
        finally:
            if reader is not None:
                reader.cancel()
            while not answers.empty():
                pending = answers.get_nowait()
                if pending is not None:
                    pending[2].cancel()
                    if pending[1] is not None:
                        pending[1].release()
            record(code.name)
        if code != grpc.StatusCode.OK:
            entry = task = None  # the failed request is not kept alive by the abort's traceback (`rpc`)
            await context.abort(code, failure)

    @rpc
    async def Lookup(self, request: pb.LookupRequest, context: grpc.aio.ServicerContext) -> pb.LookupResponse:
        items = [query_of(i, item) for i, item in enumerate(request.items)]
        code_ids = list(request.code_ids)
        composed = [parts_of(q.parts) for q in request.composed]
        contents = [*items, *(p.content for parts in composed for p in parts if p.content is not None)]
        n = len(items) + len(code_ids) + sum(len(parts) for parts in composed)
        async with self.service.admit(n, wire_size(request), contents):
            out = await self.service.lookup(
                items, request.top_k, code_ids, deadline_of(context), composed, request.collection
            )
        response = pb.LookupResponse(fingerprint=self.fingerprint, timings=timings(out.timings))
        response.results.extend(pb.CodeList(codes=codes(c)) for c in out.codes)
        response.code_vectors.extend(v.astype("<f4").tobytes() for v in out.code_vectors)
        return response

    @rpc
    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        info = self.service.info()
        return pb.InfoResponse(
            fingerprint=info.fingerprint, embed_dim=info.embed_dim, codebook_size=info.codebook_size,
            image_size_px=info.image_size_px, text_max_tokens=info.text_max_tokens,
            limits=pb.Limits(**info.limits), engines=[engine_info(e) for e in info.engines],
            version=info.version, cpu=info.cpu, exported_on=info.exported_on,
        )  # fmt: skip

    @rpc
    async def Upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.UpsertResponse:
        records = [
            Record(r.id, query_of(i, r.content, "record") if r.HasField("content") else None, r.payload_json)
            for i, r in enumerate(request.records)
        ]
        v = request.vectors
        packed = (
            PackedVectors(v.ids, v.data, v.payloads_json, v.fingerprint)
            if request.HasField("vectors")
            else None
        )
        n = len(records) + (len(v.ids) if packed else 0)
        contents = [r.content for r in records if r.content is not None]
        async with self.service.admit(n, wire_size(request), contents):
            spent = await self.service.upsert(request.collection, records, deadline_of(context), packed)
        return pb.UpsertResponse(fingerprint=self.fingerprint, upserted=n, timings=timings(spent))

    @rpc
    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        async with self.service.admit(max(len(request.ids), 1), wire_size(request)):
            deleted, spent = await self.service.delete(
                request.collection, list(request.ids), request.filter_json
            )
        return pb.DeleteResponse(deleted=deleted, fingerprint=self.fingerprint, timings=timings(spent))

    @rpc
    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        async with self.service.admit(len(request.ids), wire_size(request)):
            got = await self.service.get(request.collection, list(request.ids), request.with_vectors)
        return pb.GetResponse(
            fingerprint=self.fingerprint, records=[stored(i, r) for i, r in got.records], missing=got.missing
        )

    @rpc
    async def ListRecords(
        self, request: pb.ListRecordsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRecordsResponse:
        async with self.service.admit(1, wire_size(request)):
            page = await self.service.list_records(
                request.collection, request.limit or DEFAULT_PAGE, request.cursor, request.filter_json,
                request.with_vectors,
            )  # fmt: skip
        return pb.ListRecordsResponse(
            fingerprint=self.fingerprint, records=[stored(i, r) for i, r in page.records],
            next_cursor=page.next_cursor,
        )  # fmt: skip

    @rpc
    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        batch = bool(request.queries)
        if batch and (request.HasField("query") or request.parts):
            raise InvalidInput("set `queries`, or `query`/`parts` for one query, not both")
        queries = [search_query(q) for q in request.queries] if batch else [search_query(request)]
        parts = [p for q in queries for p in q.parts]
        contents = [p.content for p in parts if p.content is not None]
        async with self.service.admit(len(parts), wire_size(request), contents):
            found = await self.service.search_many(request.collection, queries, deadline_of(context))
        response = pb.SearchResponse(fingerprint=self.fingerprint, timings=timings(found[0].timings))
        if batch:
            response.results.extend(pb.SearchResult(hits=hits_of(f.hits), scored=f.scored) for f in found)
        else:
            response.hits.extend(hits_of(found[0].hits))
            response.scored = found[0].scored
        return response

    @rpc
    async def Count(self, request: pb.CountRequest, context: grpc.aio.ServicerContext) -> pb.CountResponse:
        async with self.service.admit(1, wire_size(request)):
            n = await self.service.count(request.collection, request.filter_json)
        return pb.CountResponse(count=n, fingerprint=self.fingerprint)

    @rpc
    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CollectionInfo:
        async with self.service.admit(1, wire_size(request)):
            created = await self.service.create_collection(
                request.name, request.backend, request.indexed_fields
            )
            return collection_info(created)

    @rpc
    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCollectionsResponse:
        async with self.service.admit(1, wire_size(request)):
            found = await self.service.list_collections()
        return pb.ListCollectionsResponse(collections=[collection_info(c) for c in found])

    @rpc
    async def DropCollection(
        self, request: pb.DropCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DropCollectionResponse:
        async with self.service.admit(1, wire_size(request)):
            await self.service.drop_collection(request.name)
        return pb.DropCollectionResponse()

    def _embedded(self, out: Embedded, request_id: str) -> pb.EmbedResponse:
        response = pb.EmbedResponse(
            fingerprint=self.fingerprint, embed_dim=self.service.embedder.embed_dim,
            timings=timings(out.timings), request_id=request_id,
        )  # fmt: skip
        for vector, item_codes in zip(out.vectors, out.codes, strict=True):
            response.embeddings.add(vector=vector.astype("<f4").tobytes(), codes=codes(item_codes))
        return response


def query_of(index: int, item: pb.Item, what: str = "item") -> Query:
    """A message item as the service takes it: content, or a vector."""
    if item.HasField("vector"):
        data = item.vector.data  # read in place: a ragged length is refused by the service, by its size
        return Vector(
            np.frombuffer(data, dtype="<f4", count=len(data) // 4), item.vector.fingerprint, len(data)
        )
    return content_of(index, item, what)


def search_query(q: pb.SearchRequest | pb.SearchQuery) -> SearchQuery:
    """A request's query, or one of its batch: `query` is a composed query of one part."""
    if q.HasField("query") and q.parts:
        raise InvalidInput("set `query` or `parts`, not both")
    parts = [Part(query_of(0, q.query, "query"))] if q.HasField("query") else parts_of(q.parts)
    if not parts:
        raise InvalidInput("the request has no items")
    return SearchQuery(parts, q.top_k, q.nprobe, q.filter_json, q.offset)


def parts_of(parts: Sequence[pb.QueryPart]) -> list[Part]:
    out = []
    for i, p in enumerate(parts):
        weight = p.weight if p.HasField("weight") else 1.0
        kind = p.WhichOneof("part")
        content = query_of(i, p.item, "query part") if kind == "item" else None
        out.append(Part(content, p.record_id if kind == "record_id" else "", weight))
    return out


def hits_of(hits: list[Hit]) -> list[pb.Hit]:
    return [pb.Hit(id=h.id, score=h.score, payload_json=h.payload, code=h.code) for h in hits]


def stored(record_id: str, r: Stored) -> pb.StoredRecord:
    vector = r.vector.astype("<f4").tobytes() if r.vector is not None else b""
    return pb.StoredRecord(id=record_id, payload_json=r.payload, code=r.code, vector=vector)


def codes(item_codes: Codes) -> list[pb.Code]:
    return [pb.Code(id=c, score=s) for c, s in item_codes]


def timings(t: Timings) -> pb.Timings:
    return pb.Timings(
        queue_ms=t.queue_ms, preprocess_ms=t.preprocess_ms, inference_ms=t.inference_ms, total_ms=t.total_ms
    )


def collection_info(c: CollectionSummary) -> pb.CollectionInfo:
    return pb.CollectionInfo(**asdict(c))  # the same fields


def engine_info(e: EngineSummary) -> pb.EngineInfo:
    info = pb.EngineInfo(
        modality=e.modality, backend=e.backend, precision=e.precision, graph=e.graph, note=e.note,
        items_per_call=e.items_per_call,
    )  # fmt: skip
    if (c := e.check) is not None:
        fields = pb.PrecisionCheck.DESCRIPTOR.fields_by_name
        check = {
            k: v for k, v in asdict(c).items() if k in fields
        }  # the message carries the service's subset
        info.check.CopyFrom(pb.PrecisionCheck(passed=c.passed, **check))
    return info
