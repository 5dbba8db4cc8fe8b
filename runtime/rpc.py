"""What every RPC shares: the one mapping from runtime errors to gRPC status codes (DESIGN.md §5),
the `rpc` decorator that counts, times and maps errors, and message -> runtime conversions."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from runtime.embedder import Content, EncodedImage, Pixels, Text
from runtime.errors import (
    AlreadyExists,
    DiskFull,
    EngineFailure,
    Expired,
    InvalidInput,
    NotFound,
    Overloaded,
    TesseraError,
    Unavailable,
)
from runtime.proto.tessera.v1 import tessera_pb2 as pb

log = logging.getLogger(__name__)
Msg = TypeVar("Msg")

STATUS: list[tuple[type[Exception], grpc.StatusCode]] = [
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DiskFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Expired, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (EngineFailure, grpc.StatusCode.INTERNAL),
]


def status_of(error: Exception) -> grpc.StatusCode:
    """The one mapping from runtime errors to gRPC status codes (DESIGN.md §5)."""
    for kind, code in STATUS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def rpc(method: Callable[..., Awaitable[Msg]]) -> Callable[..., Awaitable[Msg]]:
    """Counts and times a unary RPC, and turns a raised error into its status code."""

    @functools.wraps(method)
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Msg:
        t0, name = time.perf_counter(), method.__name__
        code = grpc.StatusCode.OK
        try:
            return await method(self, request, context)
        except TesseraError as e:
            code = status_of(e)
            await context.abort(code, str(e))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as e:
            if isinstance(e, grpc.aio.AbortError):
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", name)
            await context.abort(code, f"internal error in {name}: {type(e).__name__}")
        finally:
            self.metrics.rpc_done(name, code.name, time.perf_counter() - t0)
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
