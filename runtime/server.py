"""The gRPC transport (DESIGN.md §5): `tessera.v1.Tessera` over grpc.aio, plus the standard health
service, server reflection, Prometheus metrics and a graceful drain on SIGTERM.

Layers, after text-embeddings-inference: this module and runtime/search_rpc.py turn messages
into `runtime.embedder` and `runtime.index` calls; runtime/rpc.py maps errors to status codes (the
one mapping); the embedder owns batching and engines.

Lifecycle of `serve`: bind -> health NOT_SERVING -> load the engines (int8 ones checked on this CPU
first, runtime/selfcheck.py), warm them up with the largest batch and open (recover) the
collections, off the event loop -> SERVING (a failure before it: exit 1, one line) -> on SIGTERM or SIGINT:
NOT_SERVING, new RPCs get UNAVAILABLE, in-flight ones finish within drain_s, collections snapshot
-> exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from runtime import __version__
from runtime.admission import MB, Budget, Reservation, image_size, receive_cost, request_cost
from runtime.bundle import load_bundle
from runtime.config import ServeConfig
from runtime.cpu import CpuIsa, cpu_isa
from runtime.embedder import Embedder as EmbedderImpl
from runtime.embedder import top_codes
from runtime.errors import InvalidInput, StartError, TesseraError, Unavailable, shown
from runtime.footprint import return_freed_memory_to_the_os, trim
from runtime.index.registry import Collections
from runtime.metrics import Metrics
from runtime.proto.tessera.v1 import tessera_pb2 as pb
from runtime.proto.tessera.v1 import tessera_pb2_grpc as pb_grpc
from runtime.rpc import (
    content_of,
    deadline_of,
    decoded,
    received,
    register,
    rpc,
    status_message,
    status_of,
    timings_of,
)
from runtime.search_rpc import SearchRpcs

log = logging.getLogger(__name__)
SERVICE = "tessera.v1.Tessera"
TRIM_EVERY_S = 2.0


class Servicer(SearchRpcs, pb_grpc.TesseraServicer):
    def __init__(self, embedder: EmbedderImpl, cfg: ServeConfig, metrics: Metrics) -> None:
        self.embedder, self.cfg, self.metrics = embedder, cfg, metrics
        self.collections: Collections | None = None  # opened (recovered) with the engines
        self.ready = False  # engines loaded and warmed
        self.draining = False
        self.budget = Budget(cfg.max_inflight_mb * MB)  # runtime/admission.py
        self.streams = Budget(
            cfg.max_inflight_mb * MB // 2, "the half of the in-flight budget streams may hold"
        )

    # -- RPCs -------------------------------------------------------------------------------------

    @rpc
    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        with self._admit(request, len(request.items), request.items):
            return await self._embed(request, context)

    async def EmbedStream(
        self, request_iterator: AsyncIterator[pb.EmbedRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EmbedResponse]:
        """Pipelined within the stream's window of the in-flight budget (runtime/admission.py): the
        next request is read while the largest a request may be fits in the window, computed
        meanwhile, and answered in order; an error ends the stream with its status, naming the
        request_id."""
        t0, code = time.perf_counter(), grpc.StatusCode.OK
        window = Budget(self.cfg.stream_window_mb * MB, "this stream's window")
        answers: asyncio.Queue[tuple[str, Reservation | None, asyncio.Future[pb.EmbedResponse]] | None]
        answers = asyncio.Queue()

        async def read() -> None:
            """Reads requests while they fit the window; any failure becomes the next answer."""
            requests, request_id = request_iterator.__aiter__(), ""
            try:
                while True:
                    room = await window.take(
                        receive_cost(self.cfg.max_request_bytes), "the next request", None
                    )
                    try:
                        request = decoded(await requests.__anext__())
                        request_id = request.request_id
                        await room.grow_to(
                            self._check(request, len(request.items), request.items), "a request"
                        )
                    except BaseException:  # StopAsyncIteration included: the room is not needed
                        room.release()
                        raise
                    answer = asyncio.ensure_future(self._embed(request, context))
                    await answers.put((request_id, room, answer))
            except StopAsyncIteration:
                await answers.put(None)
            except Exception as e:  # a bad request, a refusal, a crash: the stream ends with it
                failed: asyncio.Future[pb.EmbedResponse] = asyncio.get_running_loop().create_future()
                failed.set_exception(e)
                await answers.put((request_id, None, failed))

        reader: asyncio.Future[None] | None = None
        request_id = ""  # of the answer being awaited, for the error's message
        try:
            with (
                self.streams.reserve(window.capacity, "a new stream"),
                self.budget.reserve(window.capacity, "a new stream"),
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
            await context.abort(code, status_message(f"{which}{e}"))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("EmbedStream failed")
            await context.abort(code, "internal error in EmbedStream")
        finally:
            if reader is not None:
                reader.cancel()
            while not answers.empty():
                pending = answers.get_nowait()
                if pending is not None:
                    pending[2].cancel()
                    if pending[1] is not None:
                        pending[1].release()
            self.metrics.rpc_done("EmbedStream", code.name, time.perf_counter() - t0)

    @rpc
    async def Lookup(self, request: pb.LookupRequest, context: grpc.aio.ServicerContext) -> pb.LookupResponse:
        with self._admit(request, len(request.items) + len(request.code_ids), request.items):
            return await self._lookup(request, context)

    async def _lookup(
        self, request: pb.LookupRequest, context: grpc.aio.ServicerContext
    ) -> pb.LookupResponse:
        t0 = time.perf_counter()
        k = request.top_k or 1
        if k > self.embedder.codebook.shape[0]:
            raise InvalidInput(f"top_k {k} is over the codebook size {self.embedder.codebook.shape[0]}")
        vectors = {
            i: self._vector(i, it.vector) for i, it in enumerate(request.items) if it.HasField("vector")
        }
        content = {i: content_of(i, it) for i, it in enumerate(request.items) if not it.HasField("vector")}
        scores = np.zeros((len(request.items), self.embedder.codebook.shape[0]), dtype=np.float32)  # (N, K)
        timings = pb.Timings()
        if content:
            out = await self.embedder.embed(list(content.values()), deadline_of(context))
            scores[list(content)] = out.code_scores
            timings = timings_of(out)
        if vectors:
            scores[list(vectors)] = self.embedder.vector_scores(np.stack(list(vectors.values())))
        ids, top = top_codes(scores, k)
        response = pb.LookupResponse(fingerprint=self.embedder.fingerprint, timings=timings)
        for row_ids, row_scores in zip(ids, top, strict=True):
            codes = [pb.Code(id=int(c), score=float(s)) for c, s in zip(row_ids, row_scores, strict=True)]
            response.results.append(pb.CodeList(codes=codes))
        for code_id in request.code_ids:
            if code_id >= self.embedder.codebook.shape[0]:
                raise InvalidInput(
                    f"code id {code_id} is out of range (K = {self.embedder.codebook.shape[0]})"
                )
            response.code_vectors.append(self.embedder.codebook[code_id].astype("<f4").tobytes())
        response.timings.total_ms = 1e3 * (time.perf_counter() - t0)
        return response

    @rpc
    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        cfg, m = self.cfg, self.embedder.bundle.manifest
        limits = pb.Limits(
            max_batch_size=cfg.max_batch_size, max_wait_ms=int(cfg.max_wait_ms), max_queue=cfg.max_queue,
            max_items_per_request=cfg.max_items_per_request, max_request_bytes=cfg.max_request_bytes,
            max_image_pixels=cfg.max_image_pixels, max_text_chars=cfg.max_text_chars,
            max_text_tokens=m.text.max_len,
        )  # fmt: skip
        engines = []
        if self.ready:
            assert self.embedder.engines is not None
            checks, notes = self.embedder.engines.checks, self.embedder.engines.notes
            for modality, e in self.embedder.engine_info():
                info = pb.EngineInfo(
                    modality=modality, backend=e.name, precision=e.precision, graph=e.graph,
                    note=notes.get(modality, ""), items_per_call=self.embedder.engines.calls[modality],
                )  # fmt: skip
                if (c := checks.get(modality)) is not None:
                    info.check.CopyFrom(pb.PrecisionCheck(
                        graph=c.graph, precision=c.precision, min_cosine=c.min_cosine, threshold=c.threshold,
                        passed=c.passed, rows=c.rows,
                    ))  # fmt: skip
                engines.append(info)
        exported_on = m.provenance.get("exported_on")
        return pb.InfoResponse(
            fingerprint=m.fingerprint, embed_dim=m.embed_dim, codebook_size=m.codebook_size,
            image_size_px=m.image.size_px, text_max_tokens=m.text.max_len, limits=limits, engines=engines,
            version=__version__, cpu=str(cpu_isa()),
            exported_on=str(CpuIsa(**exported_on)) if isinstance(exported_on, dict) else "",
        )  # fmt: skip

    async def _embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        """An admitted request's embeddings (Embed admits it; EmbedStream, its window)."""
        t0 = time.perf_counter()
        items = [content_of(i, item) for i, item in enumerate(request.items)]
        out = await self.embedder.embed(items, deadline_of(context))
        response = pb.EmbedResponse(
            fingerprint=self.embedder.fingerprint, embed_dim=self.embedder.embed_dim,
            timings=timings_of(out), request_id=request.request_id,
        )  # fmt: skip
        ids, top = top_codes(out.code_scores, request.top_codes) if request.top_codes else (None, None)
        for i, vector in enumerate(out.embeddings):
            e = response.embeddings.add(vector=vector.astype("<f4").tobytes())
            if ids is not None and top is not None:
                e.codes.extend(
                    pb.Code(id=int(c), score=float(s)) for c, s in zip(ids[i], top[i], strict=True)
                )
        response.timings.total_ms = 1e3 * (time.perf_counter() - t0)
        return response

    def _check(self, request: Any, n_items: int, items: Sequence[pb.Item] = ()) -> int:
        """Refuses what cannot be served (warming up, draining, too many items or bytes); returns
        the bytes the request will hold in flight (runtime/admission.py), read from its images'
        headers before any is decoded."""
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
        size = request.ByteSize()
        if size > self.cfg.max_request_bytes:
            raise InvalidInput(
                f"request of {size:,} bytes is over the {self.cfg.max_request_bytes:,}-byte limit"
            )
        images = [
            image_size(it.image)
            if it.WhichOneof("content") == "image"
            else (it.pixels.width, it.pixels.height)
            for it in items
            if it.WhichOneof("content") in ("image", "pixels")
        ]
        return request_cost(size, images, self.embedder.decoder.size_px)

    def _admit(
        self, request: Any, n_items: int, items: Sequence[pb.Item] = ()
    ) -> contextlib.AbstractContextManager[None]:
        """`_check`, then the request's share of the in-flight budget, held until it is answered:
        the reservation its call made to be read (runtime/rpc.py), resized to its real cost."""
        cost, what = self._check(request, n_items, items), f"a request of {n_items} items"
        reservation = received.get()
        if reservation is None:  # called outside a budgeted call (tests, an in-process servicer)
            return self.budget.reserve(cost, what)
        reservation.resize(cost, what)
        return contextlib.nullcontext()

    def _vector(self, index: int, v: pb.Vector, what: str = "item") -> np.ndarray:
        """A caller's vector, checked (dimension, model, finite, not zero) and L2-normalised. The
        norm is taken in float64: in float32 a 1e30 vector's norm overflows to a zero vector and a
        1e-30 one's underflows to zero."""
        d = self.embedder.embed_dim
        if v.fingerprint and v.fingerprint != self.embedder.fingerprint:
            raise InvalidInput(
                f"{what} {index}: vector from model {v.fingerprint[:12]}…, this server serves "
                f"{self.embedder.fingerprint[:12]}… (re-embed with this model)"
            )
        if len(v.data) != 4 * d:
            raise InvalidInput(
                f"{what} {index}: vector of {len(v.data)} bytes; expected {d} float32 values ({4 * d} bytes)"
            )
        array = np.frombuffer(v.data, dtype="<f4").astype(np.float64)  # (d,)
        if not np.isfinite(array).all():
            raise InvalidInput(f"{what} {index}: vector holds NaN or infinity")
        norm = float(np.linalg.norm(array))
        if norm == 0.0:
            raise InvalidInput(f"{what} {index}: the zero vector has no direction")
        return (array / norm).astype(np.float32)


# -- lifecycle --------------------------------------------------------------------------------------


async def trim_every(interval_s: float) -> None:
    """Returns what bursts of requests freed to the OS (runtime/footprint.py), off the loop."""
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(trim)


def bind(server: grpc.aio.Server, host: str, port: int) -> int:
    """Binds the gRPC port; a port another process holds stops the start (StartError)."""
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as e:  # gRPC: "Failed to bind to address ..."
        raise StartError(f"port {port} on {host} is in use (or not this machine's address): {e}") from e
    if bound == 0:
        raise StartError(f"port {port} on {host} could not be bound")
    return bound


async def serve(cfg: ServeConfig) -> int:
    """Runs the server until SIGTERM/SIGINT; returns the exit status."""
    bundle = load_bundle(cfg.bundle)
    return_freed_memory_to_the_os()
    if cfg.backend == "tensorrt" and cfg.int8 == "off":  # fail before anything listens
        from runtime.tensorrt import import_tensorrt

        import_tensorrt()
    metrics = Metrics()
    embedder = EmbedderImpl(bundle, cfg, metrics)
    servicer = Servicer(embedder, cfg, metrics)
    server = grpc.aio.server(
        maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,  # beyond: RESOURCE_EXHAUSTED, message unread
        options=[
            ("grpc.max_receive_message_length", 2 * cfg.max_request_bytes),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.so_reuseport", 1 if cfg.reuse_port else 0),  # gRPC's default shares a taken port
            ("grpc.http2.bdp_probe", 0),  # its wider windows buffer messages before admission reads them
            *(
                [("grpc.max_concurrent_streams", cfg.max_streams_per_connection)]
                if cfg.max_streams_per_connection
                else []
            ),
        ],
    )
    register(servicer, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    port = bind(server, cfg.host, cfg.port)
    if cfg.metrics_port >= 0:
        try:
            metrics_port = metrics.serve(cfg.host, cfg.metrics_port)
        except OSError as e:
            raise StartError(f"metrics port {cfg.metrics_port} on {cfg.host}: {e.strerror}") from e
    for service in ("", SERVICE):
        await health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    log.info(
        "listening on %s:%d (bundle %s, model %s)",
        cfg.host,
        port,
        bundle.root,
        bundle.manifest.fingerprint[:12],
    )
    if cfg.metrics_port >= 0:
        log.info("metrics on http://%s:%d/metrics", cfg.host, metrics_port)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    t0 = time.perf_counter()
    m = bundle.manifest
    try:  # a refused start (an int8 check, a corrupt collection) stops the listener before it returns
        await loop.run_in_executor(None, embedder.load)
        servicer.collections = await loop.run_in_executor(None, lambda: Collections(
            Path(cfg.data_dir), m.embed_dim, m.codebook_size, m.fingerprint, cfg.fsync, cfg.milvus_uri,
            cfg.repair_wal,
        ))  # fmt: skip
    except BaseException:
        await server.stop(0)
        raise
    embedder.start()
    servicer.ready = True
    for service in ("", SERVICE):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    engines = ", ".join(f"{m}: {e.name} {e.precision}" for m, e in embedder.engine_info())
    log.info("serving after %.1f s warm-up (%s)", time.perf_counter() - t0, engines)

    trimmer = asyncio.ensure_future(trim_every(TRIM_EVERY_S))
    await stop.wait()
    trimmer.cancel()
    log.info("draining: in-flight requests have %.0f s to finish", cfg.drain_s)
    servicer.draining = True
    for service in ("", SERVICE):
        await health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(cfg.drain_s)
    await embedder.close()
    servicer.collections.close()  # snapshots the built-in collections
    log.info("stopped")
    return 0
