"""Admission: what a request may hold of the server's memory, decided before any of its images is
decoded, so that no client can starve the others.

Three layers, from the outside in:
- gRPC refuses RPCs beyond `--max-concurrent-rpcs` (RESOURCE_EXHAUSTED) before reading their
  messages, and one connection may have at most `--max-streams-per-connection` streams open
  (HTTP/2: the client queues the rest).
- `Budget`: bytes in flight across all requests, `--max-inflight-mb`. A request reserves its own
  bytes plus what its images decode to (read from their headers: width x height x 3) and its
  engine inputs, before decoding; what does not fit now is RESOURCE_EXHAUSTED (retry with
  backoff), what could never fit is INVALID_ARGUMENT. The reservation is returned when the
  request is answered.
- `Window`: an EmbedStream holds a fixed share of the budget for its life and reads requests only
  while they fit in it. A client that sends faster than it reads replies stalls itself (HTTP/2 flow
  control), not the server; streams beyond what the budget can hold are refused at start.

Everything here runs on the event loop thread: no locks.

    cost = request_cost(request_bytes, images=[(w, h), ...], size_px=224)
    with budget.reserve(cost, "request"):
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Iterator, Sequence

from PIL import Image

from runtime.errors import InvalidInput, Overloaded

MB = 1 << 20


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from an encoded image's header, without decoding it; (0, 0) where the bytes
    are not an image (the decoder then says why)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # any unreadable header: refused, with its reason, when decoded
        return 0, 0


def request_cost(request_bytes: int, images: Sequence[tuple[int, int]], size_px: int) -> int:
    """Bytes a request holds at its peak: its message, each image decoded (RGB, plus Pillow's
    working copy for the resize) and each item's engine input."""
    decoded = sum(2 * 3 * w * h for w, h in images)
    inputs = 3 * size_px * size_px * len(images)
    return request_bytes + decoded + inputs


class Budget:
    """Bytes in flight, refused beyond `capacity_bytes`."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity, self.used = capacity_bytes, 0

    @contextlib.contextmanager
    def reserve(self, nbytes: int, what: str) -> Iterator[None]:
        if nbytes > self.capacity:
            raise InvalidInput(
                f"{what} needs {nbytes / MB:,.0f} MB in flight, over the server's whole budget of "
                f"{self.capacity / MB:,.0f} MB: send fewer or smaller items"
            )
        if self.used + nbytes > self.capacity:
            used, capacity = self.used / MB, self.capacity / MB
            raise Overloaded(
                f"the server's in-flight budget is full ({used:,.0f} of {capacity:,.0f} MB in use; {what} "
                f"needs {nbytes / MB:,.1f} MB): retry with backoff"
            )
        self.used += nbytes
        try:
            yield
        finally:
            self.used -= nbytes


class Window:
    """An EmbedStream's share of the budget: requests are read only while their bytes fit."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity, self.used = capacity_bytes, 0
        self.freed = asyncio.Condition()

    async def take(self, nbytes: int, what: str) -> None:
        """Waits until `nbytes` fit (the stream's earlier requests answered)."""
        if nbytes > self.capacity:
            raise InvalidInput(
                f"{what} needs {nbytes / MB:,.0f} MB in flight, over a stream's window of "
                f"{self.capacity / MB:,.0f} MB: send it as several requests"
            )
        async with self.freed:
            await self.freed.wait_for(lambda: self.used + nbytes <= self.capacity)
            self.used += nbytes

    async def give(self, nbytes: int) -> None:
        async with self.freed:
            self.used -= nbytes
            self.freed.notify_all()
