"""Admission: what a request may hold of the server's memory, decided before any of its images is
decoded, so that no client can starve the others.

Three layers, from the outside in:
- gRPC refuses RPCs beyond `--max-concurrent-rpcs` (RESOURCE_EXHAUSTED) before reading their
  messages. A message is not read ahead either: the server serves every unary method through a
  stream handler that pulls its one message when the handler asks (runtime/rpc.py), and HTTP/2's
  bandwidth probe, which would widen the window to buffer unread messages, is off. Until then a
  call holds one flow-control window of the client's bytes.
- `Budget`: bytes in flight across all requests, `--max-inflight-mb`. Before its message is read, a
  call reserves the most a request may be (`--max-request-bytes`), waiting up to
  `--admission-wait-ms` for room; once read, the reservation becomes the request's real cost: its
  bytes plus what its images decode to (read from their headers: width x height x 3, before any is
  decoded) and its engine inputs. What does not fit is RESOURCE_EXHAUSTED (retry with backoff),
  what could never fit is INVALID_ARGUMENT. The reservation is returned when the request is
  answered. So receiving and serving together hold at most the budget. Calls waiting for room are
  served fairly between connections, by the bytes their earlier requests held (`Budget`).
- A stream's window: an EmbedStream holds a fixed share of the budget for its life, as a Budget of
  its own, and reads its next request only while the most a request may be fits in it. A client
  that sends faster than it reads replies stalls itself (HTTP/2 flow control), not the server;
  streams beyond what the budget can hold are refused at start.
- `HeavyReads`: the bytes per second the server reads of large requests, all senders together,
  `--max-heavy-read-mb-s`. Receiving and parsing a message happens on the event loop, before which
  gRPC queues every new call on that same loop; a few clients sending the largest requests allowed
  as fast as they are answered take most of it, and everyone's calls wait for it before any of
  this module sees them. So a sender whose last request was large (its API key where keys are on,
  else its connection; or a stream) reserves its size in this rate before its next message is
  read, and waits for it, however long (within its deadline): a refusal would bring it straight
  back.

Everything here runs on the event loop thread: no locks.

    cost = request_cost(request_bytes, images=[(w, h), ...], size_px=224)
    reservation = await budget.take(cost, "a request", wait_s=1.0)
    ...
    reservation.release()
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from PIL import Image

from runtime.errors import InvalidInput, Overloaded

MB = 1 << 20
# A received message is held twice while it is served: gRPC's buffer until it is parsed, then the
# parsed message (its bytes fields copied out); and three times for a moment in between.
RECEIVE_COPIES, HELD_COPIES = 3, 2
PILLOW_BYTES_PER_PIXEL = 4  # RGB is stored as RGBX
MAX_CLIENTS_TRACKED = 4096  # clients' fair-queueing history kept before the idle ones are dropped
GROWERS_SHARE = 0.25  # of a budget, the most that read requests waiting to grow may hold
HEAVY_REQUEST_BYTES = 1 * MB  # a sender whose last request was larger reads through `HeavyReads`
HEAVY_BURST_S = 0.25  # what `HeavyReads` lets through at once, in seconds of its rate


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from an encoded image's header, without decoding it; (0, 0) where the bytes
    are not an image (the decoder then says why)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # any unreadable header: refused, with its reason, when decoded
        return 0, 0


def receive_cost(max_request_bytes: int) -> int:
    """What reading a message of unknown size may hold at its peak."""
    return RECEIVE_COPIES * max_request_bytes


def request_cost(request_bytes: int, images: Sequence[tuple[int, int]], size_px: int) -> int:
    """Bytes a request holds at its peak once read: its message as held, each image decoded (Pillow
    keeps RGB at 4 bytes a pixel; the decoder makes no other full-size copy) and resized, and each
    item's engine input."""
    decoded = sum(PILLOW_BYTES_PER_PIXEL * w * h for w, h in images)
    inputs = (PILLOW_BYTES_PER_PIXEL + 3) * size_px * size_px * len(images)
    return HELD_COPIES * request_bytes + decoded + inputs


@dataclass(order=True)
class _Waiter:
    tag: float  # the client's start tag: who is served first
    seq: int  # then who came first
    nbytes: int = field(compare=False)
    client: str = field(compare=False)
    granted: asyncio.Future[None] = field(compare=False)


class Budget:
    """Bytes in flight, refused beyond `capacity_bytes`, served fairly between clients.

    Waiting calls are served in start-time fair queueing order (Goyal et al., 1996), with bytes as
    the cost: each client (its API key where keys are on, else a connection) is charged what its
    requests turned out to hold once read (`charge`), so a client of small requests is served
    ahead of one that fills the budget with large ones, however many connections the latter
    opens; each is served in turn, none starves.
    A call's cost is not known before its message is read (gRPC gives no length first), so a client
    is charged after, and its next calls wait behind what its last ones cost."""

    def __init__(self, capacity_bytes: int, name: str = "the server's in-flight budget") -> None:
        self.capacity, self.used, self.name = capacity_bytes, 0, name
        self.waiting_to_grow = 0  # bytes held by reservations waiting in `Reservation.grow_to`
        self.waiters: list[_Waiter] = []  # served in their order (tag, then arrival)
        self.finish: dict[str, float] = {}  # per client: the virtual time its charges reach
        self.clock = 0.0  # virtual time: the start tag of the call served last
        self.arrivals = itertools.count()

    def _refuse(self, nbytes: int, what: str) -> Exception:
        if nbytes > self.capacity:
            return InvalidInput(
                f"{what} needs {nbytes / MB:,.0f} MB in flight, over the whole of {self.name} "
                f"({self.capacity / MB:,.0f} MB): send fewer or smaller items"
            )
        used, capacity = self.used / MB, self.capacity / MB
        return Overloaded(
            f"{self.name} is full ({used:,.0f} of {capacity:,.0f} MB in use; {what} needs "
            f"{nbytes / MB:,.1f} MB): retry with backoff"
        )

    @contextlib.contextmanager
    def reserve(self, nbytes: int, what: str) -> Iterator[None]:
        """`nbytes` now, or Overloaded (InvalidInput where it could never fit); returned on exit."""
        reservation = self.take_now(nbytes, what)
        try:
            yield
        finally:
            reservation.release()

    def take_now(self, nbytes: int, what: str) -> Reservation:
        if self.used + nbytes > self.capacity:
            raise self._refuse(nbytes, what)
        self.used += nbytes
        return Reservation(self, nbytes)

    async def take(self, nbytes: int, what: str, wait_s: float | None, client: str = "") -> Reservation:
        """`nbytes`, waiting up to `wait_s` for room (None: as long as it takes) behind the clients
        that are owed it first; then Overloaded. `client` names the caller ("": no history)."""
        if nbytes > self.capacity:
            raise self._refuse(nbytes, what)
        tag = max(self.clock, self.finish.get(client, 0.0)) if client else self.clock
        free = self.capacity - self.used
        owed_first = any(w.tag < tag and w.nbytes <= free and not w.granted.done() for w in self.waiters)
        if nbytes <= free and not owed_first:
            self._grant(tag, client, nbytes)
            return Reservation(self, nbytes, client)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(tag, next(self.arrivals), nbytes, client, loop.create_future())
        self.waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter.granted, wait_s)  # `_give` grants it
        except BaseException as e:
            if waiter.granted.done() and not waiter.granted.cancelled():
                self._give(nbytes)  # granted just as the caller gave up
            if isinstance(e, asyncio.TimeoutError):  # not the builtin TimeoutError before Python 3.11
                raise self._refuse(nbytes, what) from e
            raise
        return Reservation(self, nbytes, client)

    def charge(self, client: str, nbytes: int) -> None:
        """`client`'s request turned out to hold `nbytes`: its next calls wait behind that."""
        if client:
            self.finish[client] = max(self.finish.get(client, 0.0), self.clock) + nbytes

    def _grant(self, tag: float, client: str, nbytes: int) -> None:
        self.used += nbytes
        self.clock = max(self.clock, tag)
        if len(self.finish) > MAX_CLIENTS_TRACKED:  # clients owed nothing have no history to keep
            self.finish = {c: f for c, f in self.finish.items() if f > self.clock}

    def _give(self, nbytes: int) -> None:
        """Frees `nbytes` and grants waiting calls in order, each that fits: one waiting for more
        than there is does not hold up smaller ones behind it (its wait is bounded anyway)."""
        self.used -= nbytes
        waiting = []
        for waiter in sorted(self.waiters):
            if waiter.granted.done():  # timed out or cancelled
                continue
            if self.used + waiter.nbytes <= self.capacity:
                self._grant(waiter.tag, waiter.client, waiter.nbytes)
                waiter.granted.set_result(None)
            else:
                waiting.append(waiter)
        self.waiters = waiting


class Reservation:
    """Part of a Budget, held until released; grown or shrunk to a request's real cost once known."""

    def __init__(self, budget: Budget, nbytes: int, client: str = "") -> None:
        self.budget, self.nbytes, self.client = budget, nbytes, client

    async def grow_to(self, nbytes: int, what: str, wait_s: float | None) -> None:
        """Resizes to `nbytes`, waiting up to `wait_s` (None: as long as it takes, as a stream's
        window does, where earlier requests' answers free it) for room to grow into; then
        Overloaded. A request already read waits rather than being refused at once (its bytes are
        in memory either way, and refusing it would waste the read), but it holds its reservation
        while it waits: once waiting requests hold GROWERS_SHARE of the budget, the rest with a
        bounded wait are refused at once, so that waiting for room never takes all the room there
        is to read new requests. A stream's window (no bound) always waits: that is its flow
        control."""
        if nbytes > self.budget.capacity:
            raise self.budget._refuse(nbytes, what)
        self.budget.charge(self.client, nbytes)
        if nbytes > self.nbytes:
            budget = self.budget
            if wait_s is not None and budget.waiting_to_grow + self.nbytes > budget.capacity * GROWERS_SHARE:
                wait_s = 0.0  # enough read requests hold their bytes while they wait already
            budget.waiting_to_grow += self.nbytes
            try:
                more = await budget.take(nbytes - self.nbytes, what, wait_s, self.client)
            finally:
                budget.waiting_to_grow -= self.nbytes
            more.nbytes = 0
        elif nbytes < self.nbytes:
            self.budget._give(self.nbytes - nbytes)
        self.nbytes = nbytes

    def release(self) -> None:
        if self.nbytes:
            self.budget._give(self.nbytes)
            self.nbytes = 0


class HeavyReads:
    """Reads of large requests, at most `bytes_per_s` all together: a virtual schedule (GCRA) in
    which each read reserves its size's share of time, in the order reads ask, so that senders
    waiting together are let through one by one rather than all at once. What a sender's next
    request will be is not known before it is read; its last one stands for it, and the schedule
    is corrected by the difference once it is read (`read`)."""

    def __init__(self, bytes_per_s: float) -> None:
        self.rate, self.burst_s = bytes_per_s, HEAVY_BURST_S
        self.tat = 0.0  # loop time at which the reads scheduled so far have had their share
        self.last: dict[str, int] = {}  # per sender: its last request's size on the wire

    async def before_read(self, sender: str) -> int:
        """Waits for this sender's next read where its last request was large, bounded only by the
        call's deadline (refusing would bring it back at once, spending the loop on refusals).
        Returns the bytes reserved (0: not a heavy sender); a wait given up hands its share back."""
        nbytes = self.last.get(sender, 0)
        if nbytes < HEAVY_REQUEST_BYTES:
            return 0
        now = asyncio.get_running_loop().time()
        self.tat = max(self.tat, now) + nbytes / self.rate
        delay = self.tat - now - self.burst_s
        if delay > 0:
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                self.tat -= nbytes / self.rate
                raise
        return nbytes

    def read(self, sender: str, nbytes: int, reserved: int) -> None:
        """`sender`'s request turned out to be `nbytes` on the wire, `reserved` of it reserved."""
        if nbytes >= HEAVY_REQUEST_BYTES or reserved:
            self.tat = max(self.tat, asyncio.get_running_loop().time()) + (nbytes - reserved) / self.rate
        if nbytes >= HEAVY_REQUEST_BYTES:
            self.last[sender] = nbytes
        else:
            self.last.pop(sender, None)
        if len(self.last) > MAX_CLIENTS_TRACKED:  # the oldest senders' history goes first
            del self.last[next(iter(self.last))]

    def forget(self, sender: str) -> None:
        """`sender` (a stream) has ended."""
        self.last.pop(sender, None)
