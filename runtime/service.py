"""The service: every operation of the API on plain values — content and numpy in, dataclasses out,
the project's errors raised. No gRPC and no HTTP here: runtime/grpc_api.py and the HTTP API are
thin adapters over it, so both answer the same way, admit the same way and count the same way.

    service = Service(embedder, cfg, metrics)     # collections and `ready` are set by the server
    out = await service.embed([Text("a dog"), EncodedImage(jpeg)], top_codes=3, deadline_s=None)
    out.vectors  # (N, d) float32, L2-normalised;  out.codes  # per item [(code id, cosine), ...]

Admission (runtime/admission.py): a transport reserves room for a request before it reads it and
marks that reservation current (`received`); `admit` then checks the request's limits and grows
the reservation to its real cost, or, where no reservation is current, takes the cost now.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime import __version__
from runtime.admission import MB, Budget, HeavyReads, Reservation, image_size, request_cost
from runtime.config import ServeConfig
from runtime.cpu import CpuIsa, cpu_isa
from runtime.embedder import Content, Embedder, EncodedImage, Pixels, top_codes
from runtime.errors import InvalidInput, NotFound, Unavailable, shown
from runtime.index import filters
from runtime.index.base import (
    MAX_ID_BYTES,
    MAX_TOP_K,
    Collection,
    Hit,
    Stored,
    check_id,
    check_payload,
    check_top_k,
)
from runtime.index.registry import Collections
from runtime.metrics import Metrics
from runtime.searcher import Searcher
from runtime.selfcheck import PrecisionCheck

received: ContextVar[Reservation | None] = ContextVar("received", default=None)  # this call's budget share
Codes = list[tuple[int, float]]  # (code id, cosine), best first
MAX_NPROBE = 1 << 16  # lists a routed search may scan (a collection scans at most all it has)
MAX_PAGE = 1000  # records per page of a listing
ZERO_SUM = 1e-6  # a composed query whose weighted sum is shorter than this has no direction


@dataclass(frozen=True)
class Vector:
    """A vector a caller sends (as a query or to store): float32 values, and the model that made it."""

    values: np.ndarray  # (d,) float32, as sent
    fingerprint: str = ""  # "" = trust the caller
    nbytes: int = -1  # what the caller sent, where it came as bytes (-1: 4 per value)


Query = Content | Vector


@dataclass(frozen=True)
class Record:
    id: str
    content: Query | None
    payload_json: str = ""


@dataclass(frozen=True)
class Part:
    """One weighted part of a composed query: content or a vector, or a stored record's vector
    ("more like this"; record_id set, content None). A negative weight pushes away."""

    content: Query | None
    record_id: str = ""
    weight: float = 1.0


@dataclass(frozen=True)
class SearchQuery:
    """One query of a Search call: the weighted sum of its parts' unit embeddings, normalised."""

    parts: Sequence[Part]
    top_k: int = 10
    nprobe: int = 0
    where: Any = None  # a filter as JSON text or a parsed object; "" or None = none
    offset: int = 0  # skip this many best hits (the next page: top_k after offset)


@dataclass(frozen=True)
class PackedVectors:
    """Records given as vectors in one buffer: record i is ids[i], row i of data, payloads[i]."""

    ids: Sequence[str]
    data: bytes  # little-endian float32, len(ids) x d, row-major
    payloads: Sequence[str] = ()  # empty, or one JSON text per id
    fingerprint: str = ""  # "" = trust the caller


@dataclass
class Timings:
    queue_ms: float = 0.0
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray  # (N, d) float32
    codes: list[Codes]  # per item; empty lists unless top codes were asked for
    timings: Timings
    tokens: int = 0  # the texts' tokens


@dataclass(frozen=True)
class Looked:
    codes: list[Codes]  # per item
    code_vectors: np.ndarray  # (len(code_ids), d) float32
    timings: Timings


@dataclass(frozen=True)
class Found:
    hits: list[Hit]
    scored: int  # vectors scored (-1: the backend does not say)
    timings: Timings


@dataclass(frozen=True)
class Got:
    records: list[tuple[str, Stored]]  # in the order asked, each id once
    missing: list[str]  # asked for and not there


@dataclass(frozen=True)
class Page:
    records: list[tuple[str, Stored]]  # in id order
    next_cursor: str  # the last id of this page; "" when the listing is complete


@dataclass(frozen=True)
class CollectionSummary:
    name: str
    backend: str
    count: int
    dim: int
    fingerprint: str
    indexed_fields: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EngineSummary:
    modality: str
    backend: str
    precision: str
    graph: str
    items_per_call: int
    note: str = ""
    check: PrecisionCheck | None = None


@dataclass(frozen=True)
class ServiceInfo:
    fingerprint: str
    embed_dim: int
    codebook_size: int
    image_size_px: int
    text_max_tokens: int
    limits: dict[str, int]
    engines: list[EngineSummary] = field(default_factory=list)
    version: str = __version__
    cpu: str = ""
    exported_on: str = ""


class Service:
    def __init__(self, embedder: Embedder, cfg: ServeConfig, metrics: Metrics) -> None:
        self.embedder, self.cfg, self.metrics = embedder, cfg, metrics
        self.collections: Collections | None = None  # opened (recovered) with the engines
        self.ready = False  # engines loaded and warmed
        self.draining = False
        self.searcher = Searcher(cfg.search_threads)
        self.budget = Budget(cfg.max_inflight_mb * MB)
        self.streams = Budget(
            cfg.max_inflight_mb * MB // 2, "the half of the in-flight budget streams may hold"
        )
        self.heavy = HeavyReads(cfg.max_heavy_read_mb_s * MB) if cfg.max_heavy_read_mb_s > 0 else None

    # -- admission ---------------------------------------------------------------------------------

    def check(self, n_items: int, request_bytes: int, items: Sequence[Any] = ()) -> int:
        """Refuses what cannot be served (warming up, draining, too many items or bytes); returns
        the bytes the request will hold in flight, its images' sizes read from their headers."""
        if self.draining:
            raise Unavailable("the server is draining; retry on another replica")
        if not self.ready:
            raise Unavailable("the server is warming up its engines; retry shortly")
        if n_items == 0:
            raise InvalidInput("the request has no items")
        if n_items > self.cfg.max_items_per_request:
            raise InvalidInput(
                f"{n_items} items is over the {self.cfg.max_items_per_request}-item limit per request"
            )
        if request_bytes > self.cfg.max_request_bytes:
            raise InvalidInput(
                f"request of {request_bytes:,} bytes is over the {self.cfg.max_request_bytes:,}-byte limit"
            )
        images = [image_size_of(it) for it in items if isinstance(it, (EncodedImage, Pixels))]
        return request_cost(request_bytes, images, self.embedder.decoder.size_px)

    @contextlib.asynccontextmanager
    async def admit(self, n_items: int, request_bytes: int, items: Sequence[Any] = ()) -> AsyncIterator[None]:
        """`check`, then the request's share of the in-flight budget until it is answered: the
        reservation its transport made to read it, grown to its real cost, or taken now; waiting
        up to --admission-wait-ms for room either way."""
        cost, what = self.check(n_items, request_bytes, items), f"a request of {n_items} items"
        wait_s = self.cfg.admission_wait_ms / 1e3
        reservation = received.get()
        if reservation is not None:  # the transport's: it returns it with the answer
            await reservation.grow_to(cost, what, wait_s)
            yield
            return
        reservation = await self.budget.take(cost, what, wait_s)
        try:
            yield
        finally:
            reservation.release()

    # -- embeddings and the codebook ---------------------------------------------------------------

    async def embed(self, items: Sequence[Content], top_codes_k: int, deadline_s: float | None) -> Embedded:
        t0 = time.perf_counter()
        out = await self.embedder.embed(list(items), deadline_s)
        codes: list[Codes] = [[] for _ in items]
        if top_codes_k:
            ids, top = top_codes(out.code_scores, top_codes_k)
            codes = [_codes(i, s) for i, s in zip(ids, top, strict=True)]
        timings = Timings(out.queue_ms, out.preprocess_ms, out.inference_ms, 1e3 * (time.perf_counter() - t0))
        return Embedded(out.embeddings, codes, timings, out.tokens)

    async def lookup(
        self, items: Sequence[Query], top_k: int, code_ids: Sequence[int], deadline_s: float | None,
        composed: Sequence[Sequence[Part]] = (), collection: str = "",
    ) -> Looked:  # fmt: skip
        """Top codes of items, then of composed queries (their record ids read from `collection`),
        and code vectors by id."""
        t0 = time.perf_counter()
        k_codes = self.embedder.codebook.shape[0]
        k = top_k or 1
        if k > k_codes:
            raise InvalidInput(f"top_k {k} is over the codebook size {k_codes}")
        for code_id in code_ids:
            if not 0 <= code_id < k_codes:
                raise InvalidInput(f"code id {code_id} is out of range (K = {k_codes})")
        timings = Timings()
        codes: list[Codes] = []
        if items:
            _, scores, timings = await self.vectors(items, deadline_s, "item")
            ids, top = top_codes(scores, k)
            codes = [_codes(i, s) for i, s in zip(ids, top, strict=True)]
        if composed:
            target = self._collections().get(collection) if collection else None
            _, scores, more = await self.composed(composed, target, deadline_s)
            ids, top = top_codes(scores, k)
            codes += [_codes(i, s) for i, s in zip(ids, top, strict=True)]
            timings = more if not items else timings
        vectors = self.embedder.codebook[list(code_ids)].astype(np.float32)  # (len(code_ids), d)
        timings.total_ms = 1e3 * (time.perf_counter() - t0)
        return Looked(codes, vectors, timings)

    def info(self) -> ServiceInfo:
        cfg, m = self.cfg, self.embedder.bundle.manifest
        limits = {
            "max_batch_size": cfg.max_batch_size,
            "max_wait_ms": int(cfg.max_wait_ms),
            "max_queue": cfg.max_queue,
            "max_items_per_request": cfg.max_items_per_request,
            "max_request_bytes": cfg.max_request_bytes,
            "max_image_pixels": cfg.max_image_pixels,
            "max_text_chars": cfg.max_text_chars,
            "max_text_tokens": m.text.max_len,
        }
        engines = []
        if self.ready:
            assert self.embedder.engines is not None
            es = self.embedder.engines
            for modality, e in self.embedder.engine_info():
                note, check = es.notes.get(modality, ""), es.checks.get(modality)
                engines.append(
                    EngineSummary(modality, e.name, e.precision, e.graph, es.calls[modality], note, check)
                )
        exported = m.provenance.get("exported_on")
        return ServiceInfo(
            m.fingerprint, m.embed_dim, m.codebook_size, m.image.size_px, m.text.max_len, limits, engines,
            cpu=str(cpu_isa()), exported_on=str(CpuIsa(**exported)) if isinstance(exported, dict) else "",
        )  # fmt: skip

    # -- collections ---------------------------------------------------------------------------------

    async def upsert(
        self, collection: str, records: Sequence[Record], deadline_s: float | None,
        packed: PackedVectors | None = None,
    ) -> Timings:  # fmt: skip
        """Stores `records`, then the `packed` ones (numbered after them in errors)."""
        t0 = time.perf_counter()
        target = self._collections().get(collection)
        ids = [check_id(i, r.id) for i, r in enumerate(records)]
        payloads = [check_payload(i, r.payload_json) for i, r in enumerate(records)]
        contents: list[Query] = []
        for i, r in enumerate(records):
            if r.content is None:
                raise InvalidInput(f"record {i}: no content (set text, image, pixels or vector)")
            contents.append(r.content)
        vectors, scores, timings = await self.vectors(contents, deadline_s, "record")
        if packed is not None and packed.ids:
            ids += [check_id(len(records) + i, record_id) for i, record_id in enumerate(packed.ids)]
            payloads += self.packed_payloads(len(records), packed)
            more, more_scores = await asyncio.to_thread(self.packed_vectors, len(records), packed)
            vectors, scores = np.concatenate([vectors, more]), np.concatenate([scores, more_scores])
        codes = scores.argmax(axis=1).astype(np.int32)  # (N,) the list each vector lives in
        await asyncio.to_thread(target.upsert, ids, vectors, codes, payloads)
        timings.total_ms = 1e3 * (time.perf_counter() - t0)
        return timings

    @staticmethod
    def packed_payloads(first: int, packed: PackedVectors) -> list[str]:
        if not packed.payloads:
            return ["{}"] * len(packed.ids)
        if len(packed.payloads) != len(packed.ids):
            raise InvalidInput(f"packed vectors: {len(packed.payloads)} payloads for {len(packed.ids)} ids")
        return [check_payload(first + i, p) for i, p in enumerate(packed.payloads)]

    def packed_vectors(self, first: int, packed: PackedVectors) -> tuple[np.ndarray, np.ndarray]:
        """(unit vectors (N, d), code scores (N, K)) of packed vectors, checked as unit_vectors does."""
        n, d = len(packed.ids), self.embedder.embed_dim
        if packed.fingerprint and packed.fingerprint != self.embedder.fingerprint:
            raise InvalidInput(
                f"packed vectors from model {packed.fingerprint[:12]}…, this server serves "
                f"{self.embedder.fingerprint[:12]}… (re-embed with this model)"
            )
        if len(packed.data) != 4 * n * d:
            raise InvalidInput(
                f"packed vectors: {len(packed.data):,} bytes for {n} ids; expected {n} x {d} float32 "
                f"values ({4 * n * d:,} bytes)"
            )
        array = np.frombuffer(packed.data, dtype="<f4").reshape(n, d)  # (N, d), read in place
        vectors = self.normalised(array, range(first, first + n), "record")
        return vectors, self.embedder.vector_scores(vectors)

    async def delete(self, collection: str, ids: Sequence[str], where: Any = None) -> tuple[int, Timings]:
        """The records named by `ids`, or those a filter `where` matches (one or the other)."""
        t0 = time.perf_counter()
        target = self._collections().get(collection)
        checked = [check_id(i, record_id) for i, record_id in enumerate(ids)]
        if where in (None, ""):
            deleted = await asyncio.to_thread(target.delete, checked)
        else:
            if checked:
                raise InvalidInput("delete takes ids or a filter, not both")
            flt = self.filter_of(where)
            if flt.everything:
                raise InvalidInput("a filter matching every record is refused: drop the collection instead")
            deleted = await asyncio.to_thread(target.delete_where, flt)
        return deleted, Timings(total_ms=1e3 * (time.perf_counter() - t0))

    async def get(self, collection: str, ids: Sequence[str], with_vectors: bool) -> Got:
        target = self._collections().get(collection)
        asked = list(dict.fromkeys(check_id(i, record_id) for i, record_id in enumerate(ids)))
        found = await asyncio.to_thread(target.get, asked, with_vectors)
        return Got([(i, found[i]) for i in asked if i in found], [i for i in asked if i not in found])

    async def list_records(
        self, collection: str, limit: int, cursor: str, where: Any = None, with_vectors: bool = False
    ) -> Page:
        """A page of the records a filter matches, in id order, after the id `cursor` ("" = from
        the start); a record present for the whole listing is in exactly one of its pages."""
        target = self._collections().get(collection)
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit {limit} must be between 1 and {MAX_PAGE}")
        if len(cursor.encode()) > MAX_ID_BYTES:
            raise InvalidInput(f"cursor of {len(cursor.encode())} bytes is over {MAX_ID_BYTES} (a record id)")
        records = await asyncio.to_thread(target.page, cursor, limit, self.filter_of(where), with_vectors)
        return Page(records, records[-1][0] if len(records) == limit else "")

    async def search(
        self, collection: str, query: Query | None, top_k: int, nprobe: int, deadline_s: float | None,
        where: Any = None,
    ) -> Found:  # fmt: skip
        """One plain query; `where`: a filter as JSON text (gRPC) or a parsed JSON object (HTTP)."""
        if query is None:
            raise InvalidInput("the request has no items")
        return (
            await self.search_many(collection, [SearchQuery([Part(query)], top_k, nprobe, where)], deadline_s)
        )[0]

    async def search_many(
        self, collection: str, queries: Sequence[SearchQuery], deadline_s: float | None
    ) -> list[Found]:
        """Queries of one call, each with its own parts, top_k, nprobe, filter and offset: their
        content embedded in one batch, then searched together (an exact batch reads the vectors
        once for all of them). Answers in order; the timings are the call's."""
        t0 = time.perf_counter()
        if not queries:
            raise InvalidInput("the request has no queries")
        target = self._collections().get(collection)
        plans = []
        for i, q in enumerate(queries):
            name = f"query {i}: " if len(queries) > 1 else ""
            if not 0 <= q.nprobe <= MAX_NPROBE:
                raise InvalidInput(
                    f"{name}nprobe {q.nprobe} must be between 0 (exact search) and {MAX_NPROBE:,}"
                )
            if q.offset < 0 or q.offset + check_top_k(q.top_k) > MAX_TOP_K:
                raise InvalidInput(f"{name}offset {q.offset} + top_k {q.top_k} must be at most {MAX_TOP_K}")
            plans.append((q.offset + q.top_k, q.nprobe, self.filter_of(q.where)))
        vectors, scores, timings = await self.composed([q.parts for q in queries], target, deadline_s)
        answers = await self.searcher.search_many(
            target,
            [(v, k, nprobe, s, flt) for v, s, (k, nprobe, flt) in zip(vectors, scores, plans, strict=True)],
        )
        timings.total_ms = 1e3 * (time.perf_counter() - t0)
        return [
            Found(hits[q.offset :], scored, timings)
            for q, (hits, scored) in zip(queries, answers, strict=True)
        ]

    async def composed(
        self, queries: Sequence[Sequence[Part]], target: Collection | None, deadline_s: float | None
    ) -> tuple[np.ndarray, np.ndarray, Timings]:
        """(unit vectors (Q, d), code scores (Q, K), timings) of composed queries: each the weighted
        sum of its parts' unit vectors (content embedded in one batch with every other query's,
        records read from `target`), normalised in float64. A single part of weight 1 is the
        plain query; a sum that cancels out is refused."""
        flat = [(qi, pi, p) for qi, parts in enumerate(queries) for pi, p in enumerate(parts)]
        for qi, parts in enumerate(queries):
            if not parts:
                raise InvalidInput(f"query {qi}: no parts (give a text, image, vector or record id)")
        for qi, pi, p in flat:
            if (p.content is None) == (not p.record_id):
                raise InvalidInput(f"query {qi} part {pi}: give content or a record id, one of them")
            if not math.isfinite(p.weight):
                raise InvalidInput(f"query {qi} part {pi}: weight {p.weight} is not a finite number")
        given = [p.content for _, _, p in flat if p.content is not None]
        vectors, scores, timings = await self.vectors(given, deadline_s, "query")
        if all(
            len(parts) == 1 and parts[0].weight == 1.0 and parts[0].content is not None for parts in queries
        ):
            return vectors, scores, timings  # plain queries: Embed's vectors as they are
        named = [p.record_id for _, _, p in flat if p.record_id]
        stored: dict[str, Any] = {}
        if named:
            if target is None:
                raise InvalidInput("a record id in a query needs the collection it is read from")
            stored = await asyncio.to_thread(target.get, list(dict.fromkeys(named)), True)
        total = np.zeros((len(queries), self.embedder.embed_dim), dtype=np.float64)  # (Q, d)
        row = 0
        for qi, pi, p in flat:
            if p.content is not None:
                part, row = vectors[row], row + 1
            elif p.record_id in stored:
                part = stored[p.record_id].vector
            else:
                raise NotFound(
                    f"query {qi} part {pi}: record {shown(p.record_id)} is not in {target.spec.name!r}"
                )
            total[qi] += p.weight * part.astype(np.float64)
        norms = np.linalg.norm(total, axis=1)  # (Q,)
        if (cancelled := np.flatnonzero(norms < ZERO_SUM)).size:
            raise InvalidInput(
                f"query {cancelled[0]}: the weighted parts add up to (nearly) zero: no direction to search"
            )
        unit = (total / norms[:, None]).astype(np.float32)  # (Q, d)
        return unit, self.embedder.vector_scores(unit), timings

    async def count(self, collection: str, where: Any = None) -> int:
        target = self._collections().get(collection)
        return await asyncio.to_thread(target.count, self.filter_of(where))

    def filter_of(self, where: Any) -> filters.Filter:
        """A filter as JSON text or a parsed object, checked against the configured limits."""
        size, depth = self.cfg.max_filter_bytes, self.cfg.max_filter_depth
        if isinstance(where, str):
            return filters.parse_json(where, size, depth)
        return filters.parse(where, size, depth)

    async def create_collection(
        self, name: str, backend: str, indexed: Sequence[str] = ()
    ) -> CollectionSummary:
        return summary(await asyncio.to_thread(self._collections().create, name, backend, indexed))

    async def list_collections(self) -> list[CollectionSummary]:
        return await asyncio.to_thread(lambda: [summary(c) for c in self._collections().all()])

    async def drop_collection(self, name: str) -> None:
        await asyncio.to_thread(self._collections().drop, name)

    # -- shared ------------------------------------------------------------------------------------

    async def vectors(
        self, items: Sequence[Query], deadline_s: float | None, what: str
    ) -> tuple[np.ndarray, np.ndarray, Timings]:
        """Content or vectors -> (unit vectors (N, d), code scores (N, K), timings)."""
        n, d = len(items), self.embedder.embed_dim
        vectors = np.zeros((n, d), dtype=np.float32)  # (N, d)
        scores = np.zeros((n, self.embedder.codebook.shape[0]), dtype=np.float32)  # (N, K)
        given = [i for i, it in enumerate(items) if isinstance(it, Vector)]
        if given:  # off the event loop, which meanwhile reads the next request (numpy frees the GIL)
            vectors[given], scores[given] = await asyncio.to_thread(self.caller_vectors, given, items, what)
        content = [i for i in range(n) if not isinstance(items[i], Vector)]
        timings = Timings()
        if content:
            out = await self.embedder.embed([items[i] for i in content], deadline_s)  # type: ignore[misc]
            vectors[content], scores[content] = out.embeddings, out.code_scores
            timings = Timings(out.queue_ms, out.preprocess_ms, out.inference_ms)
        return vectors, scores, timings

    def caller_vectors(
        self, given: list[int], items: Sequence[Query], what: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(unit vectors (G, d), code scores (G, K)) of the callers' vectors items[given]."""
        vectors = self.unit_vectors(given, items, what)
        return vectors, self.embedder.vector_scores(vectors)

    def unit_vectors(self, given: list[int], items: Sequence[Query], what: str) -> np.ndarray:
        """The callers' vectors items[given], checked (dimension, model, finite, not zero) and
        L2-normalised, (G, d); the first bad one is named. The norms are taken in float64: in
        float32 a 1e30 vector's norm overflows to a zero vector and a 1e-30 one's underflows to zero."""
        d = self.embedder.embed_dim
        for i in given:
            v = items[i]
            assert isinstance(v, Vector)
            if v.fingerprint and v.fingerprint != self.embedder.fingerprint:
                raise InvalidInput(
                    f"{what} {i}: vector from model {v.fingerprint[:12]}…, this server serves "
                    f"{self.embedder.fingerprint[:12]}… (re-embed with this model)"
                )
            if v.values.shape != (d,) or v.nbytes not in (-1, 4 * d):
                sent = v.nbytes if v.nbytes >= 0 else 4 * v.values.size
                raise InvalidInput(
                    f"{what} {i}: vector of {sent} bytes; expected {d} float32 values ({4 * d} bytes)"
                )
        return self.normalised(np.stack([items[i].values for i in given]), given, what)  # type: ignore[union-attr]

    @staticmethod
    def normalised(vectors: np.ndarray, names: Sequence[int], what: str) -> np.ndarray:
        """vectors (G, d) L2-normalised in float64, as float32; the first that is not finite or is
        zero is refused, named by its index in `names`."""
        array = vectors.astype(np.float64)  # (G, d)
        finite = np.isfinite(array).all(axis=1)  # (G,)
        if not finite.all():
            raise InvalidInput(f"{what} {names[int(np.argmin(finite))]}: vector holds NaN or infinity")
        norms = np.linalg.norm(array, axis=1)  # (G,)
        if not norms.all():
            raise InvalidInput(f"{what} {names[int(np.argmin(norms))]}: the zero vector has no direction")
        return (array / norms[:, None]).astype(np.float32)

    def _collections(self) -> Collections:
        assert self.collections is not None, "opened before SERVING"
        return self.collections


def _codes(ids: np.ndarray, scores: np.ndarray) -> Codes:
    return [(int(c), float(s)) for c, s in zip(ids, scores, strict=True)]


def image_size_of(item: EncodedImage | Pixels) -> tuple[int, int]:
    return image_size(item.data) if isinstance(item, EncodedImage) else (item.width, item.height)


def summary(c: Any) -> CollectionSummary:
    s = c.spec
    return CollectionSummary(s.name, s.backend, c.count(), s.dim, s.fingerprint, list(s.indexed))
