"""What every RPC shares: the one mapping from runtime errors to gRPC status codes, the `rpc`
decorator that counts, times and maps errors, message -> runtime conversions, and `register`.

`register` serves the service with deserializers that never raise: bytes that are not the request
message become `Undecodable`, answered INVALID_ARGUMENT (a raising deserializer makes gRPC answer
UNKNOWN and log a traceback for every such request), logged at most once a minute. It serves each
unary method through a stream handler, so that its message is read only when `rpc` asks for it:
after the call has reserved room for it in the in-flight budget (runtime/admission.py). On the
wire a unary call is a stream of one message; clients see no difference."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from runtime.admission import HeavyReads, receive_cost
from runtime.embedder import Content, EncodedImage, Pixels, Text
from runtime.errors import InvalidInput, TesseraError, code_of
from runtime.keys import SCOPE_OF, KeyFile, bearer, client_of_key
from runtime.proto.tessera.v1 import tessera_pb2 as pb
from runtime.service import received

log = logging.getLogger(__name__)
Msg = TypeVar("Msg")
MAX_STATUS_CHARS = 1000
UNDECODABLE_LOG_EVERY_S = 60.0


@dataclass(frozen=True)
class Undecodable:
    """What a request that does not parse as its message type arrives as."""

    message: str  # the expected message type's full name
    error: str


class Every:
    """Lets a log line through at most once per interval; counts the ones it held back."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s, self.next, self.held = interval_s, 0.0, 0

    def due(self) -> int | None:
        """How many were held back since the last one let through, or None: hold this one back."""
        now = time.monotonic()
        if now < self.next:
            self.held += 1
            return None
        self.next, held, self.held = now + self.interval_s, self.held, 0
        return held


_undecodable_log = Every(UNDECODABLE_LOG_EVERY_S)


@dataclass(frozen=True)
class Parsed:
    """A request as it arrives: the message and its size on the wire (which `ByteSize` would
    compute again by serializing the whole message, a copy of megabytes on the event loop)."""

    message: Any
    nbytes: int


_wire_bytes: ContextVar[int] = ContextVar("wire_bytes", default=-1)


def tolerant(message: Any) -> Callable[[bytes], Any]:
    """A deserializer for `message` that returns Parsed, or Undecodable instead of raising."""
    name = message.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            return Parsed(message.FromString(data), len(data))
        except Exception as e:  # protobuf's DecodeError, or whatever its C parser raises
            return Undecodable(name, str(e) or type(e).__name__)

    return parse


def parsed_bytes(request: Any) -> int:
    """A read request's size on the wire as `tolerant` measured it; 0 where it did not parse."""
    return request.nbytes if isinstance(request, Parsed) else 0


def wire_size(request: Any) -> int:
    """The size on the wire of the request this call decoded last (`decoded`)."""
    nbytes = _wire_bytes.get()
    return nbytes if nbytes >= 0 else request.ByteSize()


def decoded(request: Any) -> Any:
    """The request's message, or InvalidInput where its bytes did not parse (logged once per
    interval). Its size on the wire is kept for `wire_size`."""
    if isinstance(request, Parsed):
        _wire_bytes.set(request.nbytes)
        return request.message
    if not isinstance(request, Undecodable):
        return request
    held = _undecodable_log.due()
    if held is not None:
        log.warning("a request is not a valid %s (%s); %d more since the last such line",
                    request.message, request.error, held)  # fmt: skip
    raise InvalidInput(f"the request is not a valid {request.message} message ({request.error})")


def register(servicer: Any, server: grpc.aio.Server, service: str = "Tessera") -> None:
    """Serves `servicer` as tessera.v1.<service>: the generated registration, with `tolerant`
    deserializers, and unary methods served as stream-unary (their message read on demand)."""
    descriptor = pb.DESCRIPTOR.services_by_name[service]
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {
        m.name: kinds[(True, m.server_streaming)](  # a unary request too: read when `rpc` pulls it
            getattr(servicer, m.name),
            request_deserializer=tolerant(getattr(pb, m.input_type.name)),
            response_serializer=getattr(pb, m.output_type.name).SerializeToString,
        )
        for m in descriptor.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(descriptor.full_name, handlers),))
    server.add_registered_method_handlers(descriptor.full_name, handlers)


def status_of(error: Exception) -> grpc.StatusCode:
    """The gRPC status code of an error (runtime/errors.py: CODES, the one mapping)."""
    return grpc.StatusCode[code_of(error)]


def status_message(text: str) -> str:
    """An error's message, cut to MAX_STATUS_CHARS: a status message beyond the client's metadata
    limit reaches it as RESOURCE_EXHAUSTED, hiding the real code."""
    return text if len(text) <= MAX_STATUS_CHARS else text[:MAX_STATUS_CHARS] + "… (message cut)"


async def one_message(requests: AsyncIterator[Any]) -> Any:
    """The single message of a unary call served as a stream (`register`)."""
    first = second = None
    async for message in requests:
        if first is None:
            first = message
        else:
            second = message
            break
    if first is None or second is not None:
        raise InvalidInput("a unary call must carry exactly one request message")
    return first


async def read_one(heavy: HeavyReads | None, sender: str, requests: AsyncIterator[Any]) -> Any:
    """The next message of `requests`, read after `heavy`'s rate lets it where its sender's last
    was large; None where the requests have ended."""
    reserved = await heavy.before_read(sender) if heavy else 0
    message = await anext(requests, None)
    if heavy and message is not None:
        heavy.read(sender, parsed_bytes(message), reserved)
    return message


def rpc(method: Callable[..., Awaitable[Msg]]) -> Callable[..., Awaitable[Msg]]:
    """Counts and times a unary RPC, and turns a raised error into its status code. Its message is
    read only once the most a request may be has been reserved in the service's in-flight budget
    (waiting up to --admission-wait-ms); the method's admission then grows or shrinks that
    reservation to the request's real cost (`received`), and it is returned with the answer.

    A failed call is aborted after its error is let go: gRPC keeps the abort's traceback in a
    reference cycle, freed only by the cyclic collector, and an error raised inside the method
    would keep the message (megabytes) alive with it."""

    @functools.wraps(method)
    async def handler(self: Any, requests: Any, context: grpc.aio.ServicerContext) -> Msg:
        t0, name = time.perf_counter(), method.__name__
        code, failure = grpc.StatusCode.OK, ""
        reservation, token = None, None
        try:
            if hasattr(requests, "__aiter__"):  # served as a stream: reserve, then read
                cfg, budget = self.service.cfg, self.service.budget
                most, wait_s = receive_cost(cfg.max_request_bytes), cfg.admission_wait_ms / 1e3
                heavy, sender = self.service.heavy, client_of(context, bool(cfg.api_keys))
                reserved = await heavy.before_read(sender) if heavy else 0  # before any room is held
                reservation = await budget.take(most, f"a {name} call", wait_s, sender)
                token = received.set(reservation)
                requests = await one_message(requests)
                if heavy:
                    heavy.read(sender, parsed_bytes(requests), reserved)
            return await method(self, decoded(requests), context)
        except TesseraError as e:
            code, failure = status_of(e), status_message(str(e))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as e:
            code, failure = grpc.StatusCode.INTERNAL, f"internal error in {name}: {type(e).__name__}"
            log.exception("%s failed", name)
        finally:
            if reservation is not None:
                reservation.release()
            if token is not None:
                received.reset(token)
            self.metrics.rpc_done(name, code.name, time.perf_counter() - t0)
        requests = None  # not kept alive by the abort's traceback
        await context.abort(code, failure)
        raise AssertionError("unreachable: abort raises")

    return handler


def content_of(index: int, item: pb.Item, what: str = "item") -> Content:
    kind = item.WhichOneof("content")
    if kind == "text":
        return Text(item.text)
    if kind == "image":
        return EncodedImage(item.image)
    if kind == "pixels":
        return Pixels(item.pixels.width, item.pixels.height, item.pixels.rgb)
    if kind == "vector":
        raise InvalidInput(f"{what} {index}: a vector cannot be embedded (send text, image or pixels)")
    raise InvalidInput(f"{what} {index}: empty {what} (set text, image or pixels)")


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


def timings_of(out: Any) -> pb.Timings:
    return pb.Timings(queue_ms=out.queue_ms, preprocess_ms=out.preprocess_ms, inference_ms=out.inference_ms)


def presented_key(metadata: Any) -> str | None:
    """The API key a call's metadata carries (`authorization: Bearer <key>`), if any."""
    header = next((v for k, v in metadata or () if k == "authorization"), None)
    return bearer(str(header) if header is not None else None)


def client_of(context: grpc.aio.ServicerContext, keyed: bool) -> str:
    """Who a call is, for fair queueing and the heavy-read rate. With API keys on, its key (KeyCheck
    has checked it before any handler runs), so that the connections a client opens share one
    history and a new connection for each large request gains it nothing; without keys, its
    connection: its host would lump together every client behind one proxy or NAT."""
    if keyed:
        return client_of_key(presented_key(context.invocation_metadata())) or context.peer()
    return context.peer()


class KeyCheck(grpc.aio.ServerInterceptor):
    """API keys for tessera.v1.Tessera (health and reflection stay open, revealing nothing): a call
    without a valid key of its method's scope (runtime/keys.py) is refused before its message is
    read, and counted by its code."""

    def __init__(self, keys: KeyFile, metrics: Any) -> None:
        self.keys, self.metrics = keys, metrics

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        service, _, method = details.method.rpartition("/")
        if service != "/tessera.v1.Tessera":
            return await continuation(details)
        try:
            self.keys.check(presented_key(details.invocation_metadata), SCOPE_OF.get(method, "admin"))
        except TesseraError as e:
            code = code_of(e)
            self.metrics.rpc_done(method, code, 0.0)
            return refusal(grpc.StatusCode[code], str(e), streaming=method == "EmbedStream")
        return await continuation(details)


def refusal(code: grpc.StatusCode, message: str, streaming: bool) -> grpc.RpcMethodHandler:
    """A handler that answers `code` without reading the request."""

    async def unary(requests: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # a generator, as a streaming handler must be

    if streaming:
        return grpc.stream_stream_rpc_method_handler(stream)
    return grpc.stream_unary_rpc_method_handler(unary)
