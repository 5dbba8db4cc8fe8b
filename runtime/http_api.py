"""The HTTP/JSON transport of the service (runtime/service.py), on the server's own event loop and
model: FastAPI for the routes and their OpenAPI document (/openapi.json), uvicorn to serve them.

    POST /v1/embeddings                       OpenAI's embeddings API: `input` a string or a list;
                                              an input may be an image as a data:image/...;base64,
                                              URL; `encoding_format` float | base64; `usage`
    POST /v1/embed                            gRPC's Embed: items of any kind, top codes
    POST /v1/lookup                           top codes of items or vectors; code vectors by id
    GET  /v1/info                             the model, limits and engines
    GET  /v1/collections, POST /v1/collections, DELETE /v1/collections/{name}
    POST /v1/collections/{name}/records       upsert
    POST /v1/collections/{name}/delete        delete by ids, or every record a filter matches
    POST /v1/collections/{name}/search        by text, image or vector; top_k, nprobe, filter
    POST /v1/collections/{name}/count         records, all or those a filter matches
    POST /v1/collections/{name}/get           records by id (payload, code, optionally vector)
    POST /v1/collections/{name}/list          a page of records in id order; cursor, filter
    GET  /healthz, /readyz                    live; engines warm and not draining (503 otherwise)
    GET  /, /v1/media/{path}                  the search page and its images (runtime/web.py)

An item is one of {"text"}, {"image": base64 or a data URL}, {"pixels": {"width", "height", "rgb":
base64}}, {"vector": [floats] or base64 float32, "fingerprint"}. Vectors come back as float lists,
or base64 little-endian float32 with "encoding_format": "base64". Errors are the service's, as an
HTTP status and {"error": {"code", "message", "type"}} naming the item (OpenAI's error shape);
the codes and the metrics are gRPC's, labelled transport="http".

Admission (runtime/admission.py) happens before the body is read, as for gRPC: the request's
Content-Length (or, without one, the most a request may be) reserves its room in the in-flight
budget first; a longer body than allowed is refused without being read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal

import numpy as np
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from runtime.admission import receive_cost
from runtime.embedder import Content, EncodedImage, Pixels, Text
from runtime.errors import DiskFull, InvalidInput, Overloaded, StartError, TesseraError, code_of
from runtime.index.base import Hit, Stored
from runtime.keys import SCOPE_OF, KeyFile, bearer, client_of_key
from runtime.metrics import Metrics
from runtime.rpc import status_message
from runtime.service import Codes, Part, Query, Record, SearchQuery, Service, Vector, received
from runtime.tls import Tls
from runtime.web import add_page

log = logging.getLogger(__name__)
Receive = Callable[[], Awaitable[Any]]  # ASGI
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "RESOURCE_EXHAUSTED": 429,
    "DEADLINE_EXCEEDED": 504, "UNAVAILABLE": 503, "INTERNAL": 500, "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
}  # fmt: skip
DATA_URL_PREFIX = "data:image/"


# -- the JSON shapes ---------------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RawPixels(Strict):
    width: int
    height: int
    rgb: str = Field(description="(height, width, 3) uint8 RGB, base64")


class Item(Strict):
    """Exactly one of text, image, pixels or vector."""

    text: str | None = None
    image: str | None = Field(None, description="an encoded image (JPEG, PNG, WebP), base64 or a data URL")
    pixels: RawPixels | None = None
    vector: list[float] | str | None = Field(None, description="floats, or base64 little-endian float32")
    fingerprint: str = Field("", description="the model that made the vector ('' = trust it)")


class QueryPart(Item):
    """An item, or a stored record by id ("more like this"), with its weight."""

    record_id: str | None = Field(None, description="a record of the collection: its stored vector")
    weight: float = Field(1.0, description="negative pushes away")


class EmbeddingsRequest(BaseModel):
    input: str | list[str] = Field(description="texts, or images as data:image/...;base64, URLs")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class EmbedRequest(Strict):
    items: list[Item]
    top_codes: int = 0
    encoding_format: Literal["float", "base64"] = "float"


class LookupRequest(Strict):
    items: list[Item] = []
    top_k: int = 1
    code_ids: list[int] = []
    composed: list[list[QueryPart]] = Field([], description="composed queries: their codes follow the items'")
    collection: str = Field("", description="where the composed queries' record ids are read from")
    encoding_format: Literal["float", "base64"] = "float"


class CreateCollection(Strict):
    name: str
    backend: str = "builtin"
    indexed_fields: list[str] = Field([], description="payload paths to index for filters, e.g. category")


class RecordIn(Strict):
    id: str
    item: Item | None = None
    payload: Any = Field(None, description="any JSON value (stored and returned as is)")


class UpsertRequest(Strict):
    records: list[RecordIn]


class DeleteRequest(Strict):
    ids: list[str] = []
    filter: dict[str, Any] | None = Field(None, description="instead of ids: every record it matches")


class GetRequest(Strict):
    ids: list[str]
    with_vectors: bool = False
    encoding_format: Literal["float", "base64"] = "float"


class ListRequest(Strict):
    limit: int = 100
    cursor: str = Field("", description="next_cursor of the page before; empty = from the start")
    filter: dict[str, Any] | None = None
    with_vectors: bool = False
    encoding_format: Literal["float", "base64"] = "float"


class SearchQueryIn(Strict):
    query: Item | None = None
    parts: list[QueryPart] | None = Field(None, description="instead of query: a weighted composed query")
    top_k: int = 10
    nprobe: int = 0
    filter: dict[str, Any] | None = Field(
        None, description='which records may answer, e.g. {"price": {"$lt": 100}}'
    )
    offset: int = Field(0, description="skip this many best hits (offset + top_k at most 1000)")


class SearchRequest(SearchQueryIn):
    queries: list[SearchQueryIn] | None = Field(
        None, description="instead of one query: many, answered in `results` in order"
    )


class CountRequest(Strict):
    filter: dict[str, Any] | None = Field(None, description="as search's; none = every record")


# -- conversions ----------------------------------------------------------------------------------------


def decode_base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f"{what} is not valid base64 ({e})") from e


def image_bytes(text: str, what: str) -> bytes:
    """A base64 image, or one inside a data URL."""
    if text.startswith("data:"):
        header, _, data = text.partition(",")
        if not header.startswith(DATA_URL_PREFIX) or not header.endswith(";base64"):
            raise InvalidInput(f"{what}: a data URL must be data:image/<type>;base64,...")
        text = data
    return decode_base64(text, what)


def content_of(index: int, item: Item, what: str = "item") -> Query:
    """An item as the service takes it, with gRPC's messages for the same mistakes."""
    given = [k for k in ("text", "image", "pixels", "vector") if getattr(item, k) is not None]
    if not given:
        raise InvalidInput(f"{what} {index}: empty {what} (set text, image or pixels)")
    if len(given) > 1:
        raise InvalidInput(
            f"{what} {index}: set one of text, image, pixels or vector, not {' and '.join(given)}"
        )
    if item.text is not None:
        return Text(item.text)
    if item.image is not None:
        return EncodedImage(image_bytes(item.image, f"{what} {index}: image"))
    if item.pixels is not None:
        return Pixels(
            item.pixels.width, item.pixels.height, decode_base64(item.pixels.rgb, f"{what} {index}: rgb")
        )
    if isinstance(item.vector, str):
        data = decode_base64(item.vector, f"{what} {index}: vector")
        usable = len(data) - len(data) % 4
        return Vector(np.frombuffer(data[:usable], dtype="<f4"), item.fingerprint, len(data))
    return Vector(np.asarray(item.vector, dtype=np.float32), item.fingerprint)


def parts_of(parts: list[QueryPart]) -> list[Part]:
    out = []
    for i, p in enumerate(parts):
        has_item = any(getattr(p, k) is not None for k in ("text", "image", "pixels", "vector"))
        content = content_of(i, p, "query part") if has_item or p.record_id is None else None
        out.append(Part(content, p.record_id or "", p.weight))
    return out


def search_query(q: SearchQueryIn) -> SearchQuery:
    if q.query is not None and q.parts:
        raise InvalidInput("set `query` or `parts`, not both")
    parts = [Part(content_of(0, q.query, "query"))] if q.query is not None else parts_of(q.parts or [])
    if not parts:
        raise InvalidInput("the request has no items")
    return SearchQuery(parts, q.top_k, q.nprobe, q.filter, q.offset)


def hits_json(hits: list[Hit]) -> list[dict[str, Any]]:
    return [
        {"id": h.id, "score": h.score, "code": h.code, "payload": orjson.Fragment(h.payload)} for h in hits
    ]


def input_of(index: int, text: str) -> Content:
    """An /v1/embeddings input: a text, or an image as a data URL."""
    if text.startswith(DATA_URL_PREFIX):
        return EncodedImage(image_bytes(text, f"input {index}"))
    return Text(text)


def vector_json(vector: np.ndarray, encoding: str) -> Any:
    return base64.b64encode(vector.astype("<f4").tobytes()).decode() if encoding == "base64" else vector


def record_json(record_id: str, r: Stored, encoding: str) -> dict[str, Any]:
    out = {"id": record_id, "payload": orjson.Fragment(r.payload), "code": r.code}
    if r.vector is not None:
        out["vector"] = vector_json(r.vector, encoding)
    return out


def codes_json(codes: Codes) -> list[dict[str, Any]]:
    return [{"id": c, "score": s} for c, s in codes]


class Orjson(Response):
    """JSON through orjson: numpy arrays as float lists without a Python list in between."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_response(error: Exception) -> Response:
    code = code_of(error) if isinstance(error, TesseraError) else "INTERNAL"
    status = 507 if isinstance(error, DiskFull) else HTTP_STATUS[code]
    kind = "invalid_request_error" if status < 500 and status != 429 else "server_error"
    body = {"error": {"code": code, "message": status_message(str(error)), "type": kind}}
    headers = {"Retry-After": "1"} if isinstance(error, Overloaded) else None
    return Orjson(body, status_code=status, headers=headers)


# -- admission, before the body is read -----------------------------------------------------------------


class Admission:
    """Pure ASGI: reserves a request's room before its body is read, and refuses a body longer than
    the limit (by Content-Length, or while it arrives) without reading it all."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Awaitable[Any]], send: Any
    ) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH", "DELETE"):
            await self.app(scope, receive, send)
            return
        cfg = self.service.cfg
        headers = dict(scope["headers"])
        length = int(headers[b"content-length"]) if b"content-length" in headers else None
        try:
            if length is not None and length > cfg.max_request_bytes:
                raise InvalidInput(
                    f"request of {length:,} bytes is over the {cfg.max_request_bytes:,}-byte limit"
                )
            most = receive_cost(length if length is not None else cfg.max_request_bytes)
            client = client_of(scope, bool(cfg.api_keys))
            reservation = await self.service.budget.take(most, "a call", cfg.admission_wait_ms / 1e3, client)
        except TesseraError as e:
            await error_response(e)(scope, receive, send)
            return
        seen = 0

        async def bounded() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > cfg.max_request_bytes:
                raise InvalidInput(f"request of over {cfg.max_request_bytes:,} bytes is over the byte limit")
            return message

        token = received.set(reservation)
        try:
            await self.app(scope, bounded, send)
        finally:
            reservation.release()
            received.reset(token)


def client_of(scope: dict[str, Any], keyed: bool) -> str:
    """Who a request is, for fair queueing: its key where keys are on (the Keys middleware has
    checked it), else its connection, as on gRPC (runtime/rpc.py `client_of`)."""
    key = presented_key(scope) if keyed else None
    if key:
        return client_of_key(key)
    return "{}:{}".format(*scope["client"]) if scope.get("client") else ""


def presented_key(scope: dict[str, Any]) -> str | None:
    """The API key a request carries (`authorization: Bearer <key>`), if any."""
    header = dict(scope["headers"]).get(b"authorization")
    return bearer(header.decode("latin-1") if header else None)


# -- API keys, before admission ---------------------------------------------------------------------

OPEN = {"/", "/healthz", "/readyz", "/openapi.json"}  # the page, probes and the schema: no key


def method_of(verb: str, path: str) -> str:
    """The API method a route serves (runtime/keys.py scopes them; metrics name them)."""
    parts = path.strip("/").split("/")  # v1, collections, {name}, search
    fixed = {
        ("POST", "v1/embeddings"): "Embed", ("POST", "v1/embed"): "Embed", ("POST", "v1/lookup"): "Lookup",
        ("GET", "v1/info"): "Info", ("GET", "v1/collections"): "ListCollections",
        ("POST", "v1/collections"): "CreateCollection",
    }  # fmt: skip
    if (verb, "/".join(parts)) in fixed:
        return fixed[(verb, "/".join(parts))]
    if parts[:2] == ["v1", "media"] and verb == "GET":
        return "Media"
    if parts[:2] == ["v1", "collections"] and len(parts) == 3 and verb == "DELETE":
        return "DropCollection"
    if parts[:2] == ["v1", "collections"] and len(parts) == 4 and verb == "POST":
        routes = {"records": "Upsert", "delete": "Delete", "search": "Search", "count": "Count",
                  "get": "Get", "list": "ListRecords"}  # fmt: skip
        return routes.get(parts[3], "Info")
    return "Info"  # anything else needs a read key too: no route is told apart from a missing one


class Keys:
    """Pure ASGI: a request without a valid key of its route's scope is refused unread."""

    def __init__(self, app: Any, keys: KeyFile, metrics: Metrics) -> None:
        self.app, self.keys, self.metrics = app, keys, metrics

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN:
            await self.app(scope, receive, send)
            return
        method = method_of(scope["method"], scope["path"])
        try:
            self.keys.check(presented_key(scope), SCOPE_OF[method])
        except TesseraError as e:
            self.metrics.rpc_done(method, code_of(e), 0.0, transport="http")
            await error_response(e)(scope, receive, send)
            return
        await self.app(scope, receive, send)


# -- the app ----------------------------------------------------------------------------------------------


def build_app(service: Service, metrics: Metrics, keys: KeyFile | None = None) -> Any:
    """The FastAPI app over `service`, wrapped in admission and, with `keys`, in key checks."""
    app = FastAPI(title="Tessera", version=service.info().version, docs_url=None, redoc_url=None)

    @contextlib.contextmanager
    def counted(method: str) -> Iterator[None]:
        """The gRPC path's metrics, for this transport."""
        t0, code = time.perf_counter(), "OK"
        try:
            yield
        except TesseraError as e:
            code = code_of(e)
            raise
        except BaseException:
            code = "INTERNAL"
            raise
        finally:
            metrics.rpc_done(method, code, time.perf_counter() - t0, transport="http")

    def size(request: Request) -> int:
        return int(request.headers.get("content-length", 0))

    @app.exception_handler(TesseraError)
    async def tessera_error(request: Request, error: TesseraError) -> Response:
        return error_response(error)

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(InvalidInput(f"{where or 'the request'}: {first.get('msg', 'invalid')}"))

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingsRequest, request: Request) -> Response:
        with counted("Embed"):
            texts = [body.input] if isinstance(body.input, str) else body.input
            info_dim = service.embedder.embed_dim
            if body.dimensions is not None and body.dimensions != info_dim:
                raise InvalidInput(f"dimensions {body.dimensions}: this model's embeddings have {info_dim}")
            items = [input_of(i, t) for i, t in enumerate(texts)]
            async with service.admit(len(items), size(request), items):
                out = await service.embed(items, 0, deadline_of(request))
            data = [{"object": "embedding", "index": i, "embedding": vector_json(v, body.encoding_format)}
                    for i, v in enumerate(out.vectors)]  # fmt: skip
            usage = {"prompt_tokens": out.tokens, "total_tokens": out.tokens}
            return Orjson({"object": "list", "data": data, "model": model_name(service), "usage": usage})

    @app.post("/v1/embed")
    async def embed(body: EmbedRequest, request: Request) -> Response:
        with counted("Embed"):
            items = [content_of(i, it) for i, it in enumerate(body.items)]
            if any(isinstance(it, Vector) for it in items):
                index = next(i for i, it in enumerate(items) if isinstance(it, Vector))
                raise InvalidInput(f"item {index}: a vector cannot be embedded (send text, image or pixels)")
            async with service.admit(len(items), size(request), items):
                out = await service.embed(items, body.top_codes, deadline_of(request))  # type: ignore[arg-type]
            embeddings = [{"vector": vector_json(v, body.encoding_format), "codes": codes_json(c)}
                          for v, c in zip(out.vectors, out.codes, strict=True)]  # fmt: skip
            model = service.embedder
            reply = {"embeddings": embeddings, "fingerprint": model.fingerprint, "embed_dim": model.embed_dim}
            return Orjson({**reply, "timings": vars(out.timings)})

    @app.post("/v1/lookup")
    async def lookup(body: LookupRequest, request: Request) -> Response:
        with counted("Lookup"):
            items = [content_of(i, it) for i, it in enumerate(body.items)]
            composed = [parts_of(q) for q in body.composed]
            contents = [*items, *(p.content for parts in composed for p in parts if p.content is not None)]
            n = len(items) + len(body.code_ids) + sum(len(parts) for parts in composed)
            async with service.admit(n, size(request), contents):
                out = await service.lookup(
                    items, body.top_k, body.code_ids, deadline_of(request), composed, body.collection
                )
            vectors = [vector_json(v, body.encoding_format) for v in out.code_vectors]
            return Orjson({"results": [codes_json(c) for c in out.codes], "code_vectors": vectors,
                           "fingerprint": service.embedder.fingerprint})  # fmt: skip

    @app.get("/v1/info")
    async def info() -> Response:
        with counted("Info"):
            summary = service.info()
            engines = [{**vars(e), "check": _check_json(e.check)} for e in summary.engines]
            return Orjson({**vars(summary), "engines": engines})

    @app.get("/v1/collections")
    async def list_collections() -> Response:
        with counted("ListCollections"):
            if not service.ready:
                service.check(1, 0)  # the warming-up answer
            return Orjson({"collections": [vars(c) for c in await service.list_collections()]})

    @app.post("/v1/collections", status_code=201)
    async def create_collection(body: CreateCollection, request: Request) -> Response:
        with counted("CreateCollection"):
            async with service.admit(1, size(request)):
                created = await service.create_collection(body.name, body.backend, body.indexed_fields)
                return Orjson(vars(created), status_code=201)

    @app.delete("/v1/collections/{name}")
    async def drop_collection(name: str, request: Request) -> Response:
        with counted("DropCollection"):
            async with service.admit(1, size(request)):
                await service.drop_collection(name)
                return Orjson({"dropped": name})

    @app.post("/v1/collections/{name}/records")
    async def upsert(name: str, body: UpsertRequest, request: Request) -> Response:
        with counted("Upsert"):
            records = [
                Record(r.id, content_of(i, r.item, "record") if r.item is not None else None,
                       "" if r.payload is None else json.dumps(r.payload))
                for i, r in enumerate(body.records)
            ]  # fmt: skip
            contents = [r.content for r in records if r.content is not None]
            async with service.admit(len(records), size(request), contents):
                await service.upsert(name, records, deadline_of(request))
            return Orjson({"upserted": len(records), "fingerprint": service.embedder.fingerprint})

    @app.post("/v1/collections/{name}/delete")
    async def delete(name: str, body: DeleteRequest, request: Request) -> Response:
        with counted("Delete"):
            async with service.admit(max(len(body.ids), 1), size(request)):
                deleted, _ = await service.delete(name, body.ids, body.filter)
                return Orjson({"deleted": deleted})

    @app.post("/v1/collections/{name}/get")
    async def get(name: str, body: GetRequest, request: Request) -> Response:
        with counted("Get"):
            async with service.admit(len(body.ids), size(request)):
                got = await service.get(name, body.ids, body.with_vectors)
            records = [record_json(i, r, body.encoding_format) for i, r in got.records]
            fingerprint = service.embedder.fingerprint
            return Orjson({"records": records, "missing": got.missing, "fingerprint": fingerprint})

    @app.post("/v1/collections/{name}/list")
    async def list_records(name: str, body: ListRequest, request: Request) -> Response:
        with counted("ListRecords"):
            async with service.admit(1, size(request)):
                page = await service.list_records(
                    name, body.limit, body.cursor, body.filter, body.with_vectors
                )
            records = [record_json(i, r, body.encoding_format) for i, r in page.records]
            return Orjson({"records": records, "next_cursor": page.next_cursor,
                           "fingerprint": service.embedder.fingerprint})  # fmt: skip

    @app.post("/v1/collections/{name}/search")
    async def search(name: str, body: SearchRequest, request: Request) -> Response:
        with counted("Search"):
            batch = body.queries is not None
            if batch and (body.query is not None or body.parts):
                raise InvalidInput("set `queries`, or `query`/`parts` for one query, not both")
            queries = [search_query(q) for q in body.queries or []] if batch else [search_query(body)]
            parts = [p for q in queries for p in q.parts]
            contents = [p.content for p in parts if p.content is not None]
            async with service.admit(len(parts), size(request), contents):
                found = await service.search_many(name, queries, deadline_of(request))
            fingerprint = service.embedder.fingerprint
            if batch:
                results = [{"hits": hits_json(f.hits), "scored": f.scored} for f in found]
                return Orjson({"results": results, "fingerprint": fingerprint})
            return Orjson(
                {"hits": hits_json(found[0].hits), "scored": found[0].scored, "fingerprint": fingerprint}
            )

    @app.post("/v1/collections/{name}/count")
    async def count(name: str, body: CountRequest, request: Request) -> Response:
        with counted("Count"):
            async with service.admit(1, size(request)):
                n = await service.count(name, body.filter)
            return Orjson({"count": n, "fingerprint": service.embedder.fingerprint})

    @app.get("/healthz")
    async def healthz() -> Response:
        return Orjson({"status": "live"})

    @app.get("/readyz")
    async def readyz() -> Response:
        ready = service.ready and not service.draining
        return Orjson({"status": "ready" if ready else "not ready"}, status_code=200 if ready else 503)

    add_page(app, service.cfg.media_root, counted)
    admitted = Admission(app, service)
    return Keys(admitted, keys, metrics) if keys is not None else admitted


def _check_json(check: Any) -> Any:
    return None if check is None else {**vars(check), "passed": check.passed}


def model_name(service: Service) -> str:
    """What `model` says in /v1/embeddings replies: this bundle, by its fingerprint."""
    return f"tessera-{service.embedder.fingerprint[:12]}"


def deadline_of(request: Request) -> float | None:
    """HTTP has no deadline of its own: a request waits as long as its client does."""
    return None


class EmbeddedServer(uvicorn.Server):
    """uvicorn on the server's event loop: SIGTERM belongs to the server's drain, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def start(
    service: Service,
    metrics: Metrics,
    host: str,
    port: int,
    drain_s: float,
    tls: Tls | None = None,
    keys: KeyFile | None = None,
) -> tuple[EmbeddedServer, asyncio.Task[None], int]:
    """Binds the port (a taken one raises StartError, not uvicorn's exit) and starts serving on this
    loop; returns the server, its task and the bound port (0 picks one)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise StartError(f"HTTP port {port} on {host}: {e.strerror}") from e
    config = uvicorn.Config(
        build_app(service, metrics, keys), log_config=None, access_log=False, lifespan="off", loop="none",
        timeout_graceful_shutdown=int(drain_s), **(tls.uvicorn_options() if tls else {}),
    )  # fmt: skip
    server = EmbeddedServer(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise StartError("the HTTP server stopped before it started")
        await asyncio.sleep(0.01)
    return server, task, int(sock.getsockname()[1])
