"""The server process: `tessera.v1.Tessera` over grpc.aio, the standard health service, server
reflection, Prometheus metrics and a graceful drain on SIGTERM.

Layers, after text-embeddings-inference: runtime/service.py is every operation on plain values
(admission included); runtime/grpc_api.py turns messages into service calls and back, and
runtime/rpc.py maps errors to status codes (the one mapping); the embedder owns batching and
engines, runtime/index the collections. This module wires them and runs the lifecycle.

Lifecycle of `serve`: bind -> health NOT_SERVING -> load the engines (int8 ones checked on this CPU
first, runtime/selfcheck.py), warm them up with the largest batch and open (recover) the
collections, off the event loop -> SERVING (a failure before it: exit 1, one line) -> on SIGTERM or SIGINT:
NOT_SERVING, new RPCs get UNAVAILABLE, in-flight ones finish within drain_s, collections snapshot
-> exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from runtime.bundle import load_bundle
from runtime.config import ServeConfig
from runtime.embedder import Embedder
from runtime.errors import StartError
from runtime.footprint import return_freed_memory_to_the_os, trim
from runtime.grpc_api import Servicer
from runtime.index import scan
from runtime.index.registry import Collections
from runtime.keys import KeyFile
from runtime.metrics import Metrics
from runtime.rpc import KeyCheck, register
from runtime.service import Service
from runtime.tls import Tls, load_tls

log = logging.getLogger(__name__)
SERVICE = "tessera.v1.Tessera"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
TRIM_EVERY_S = 2.0


# -- lifecycle --------------------------------------------------------------------------------------


async def trim_every(interval_s: float) -> None:
    """Returns what bursts of requests freed to the OS (runtime/footprint.py), off the loop."""
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(trim)


def reload_keys(keys: KeyFile) -> None:
    """SIGHUP: the key file again; a broken one keeps the keys already loaded."""
    try:
        log.info("reloaded %d API keys from %s", keys.reload(), keys.path)
    except StartError as e:
        log.error("%s; keeping the %d keys loaded before", e, len(keys.entries))


def bind(server: grpc.aio.Server, host: str, port: int, tls: Tls | None) -> int:
    """Binds the gRPC port; a port another process holds stops the start (StartError)."""
    try:
        address = f"{host}:{port}"
        bound = (
            server.add_secure_port(address, tls.grpc_credentials())
            if tls
            else server.add_insecure_port(address)
        )
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
    tls = load_tls(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
    keys = KeyFile(Path(cfg.api_keys)) if cfg.api_keys else None
    loopback = cfg.host in LOOPBACK
    if not loopback and tls is None and keys is None and not cfg.insecure:
        log.warning(
            "SERVING ON %s WITHOUT TLS OR API KEYS: anyone who can reach the port can read and drop "
            "collections. Pass --tls-cert/--tls-key and --api-keys, or --insecure to silence this.", cfg.host,
        )  # fmt: skip
    metrics = Metrics()
    embedder = Embedder(bundle, cfg, metrics)
    service = Service(embedder, cfg, metrics)
    scan.set_policy(service.searcher.threads)  # one BLAS thread; a scan shared by idle search threads
    server = grpc.aio.server(
        interceptors=[KeyCheck(keys, metrics)] if keys is not None else None,
        maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,  # beyond: RESOURCE_EXHAUSTED, message unread
        options=[
            ("grpc.max_receive_message_length", 2 * cfg.max_request_bytes),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.so_reuseport", 1 if cfg.reuse_port else 0),  # gRPC's default shares a taken port
            ("grpc.http2.bdp_probe", 0),  # its wider windows buffer messages before admission reads them
            *([("grpc.max_concurrent_streams", cfg.max_streams_per_connection)]
              if cfg.max_streams_per_connection else []),
        ],
    )  # fmt: skip
    register(Servicer(service, metrics), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if cfg.reflection == "on" or (cfg.reflection == "auto" and loopback):
        names = (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    port = bind(server, cfg.host, cfg.port, tls)
    if cfg.metrics_port >= 0:
        try:
            metrics_port = metrics.serve(cfg.metrics_host, cfg.metrics_port)
        except OSError as e:
            raise StartError(f"metrics port {cfg.metrics_port} on {cfg.metrics_host}: {e.strerror}") from e
    for name in ("", SERVICE):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    transport = "mTLS" if tls and tls.client_ca else "TLS" if tls else "plaintext"
    security = f"{transport}, {'API keys' if keys else 'no keys'}"
    log.info("listening on %s:%d (bundle %s, model %s; %s)", cfg.host, port, bundle.root,
             bundle.manifest.fingerprint[:12], security)  # fmt: skip
    if cfg.metrics_port >= 0:
        log.info("metrics on http://%s:%d/metrics", cfg.metrics_host, metrics_port)
    http = None
    if cfg.http_port >= 0:
        from runtime import http_api  # FastAPI and uvicorn: the `http` extra

        http = await http_api.start(service, metrics, cfg.host, cfg.http_port, cfg.drain_s, tls, keys)
        log.info("http on http%s://%s:%d", "s" if tls else "", cfg.host, http[2])

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if keys is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: reload_keys(keys))
    t0 = time.perf_counter()
    m = bundle.manifest
    try:  # a refused start (an int8 check, a corrupt collection) stops the listener before it returns
        await loop.run_in_executor(None, embedder.load)
        service.collections = await loop.run_in_executor(None, lambda: Collections(
            Path(cfg.data_dir), m.embed_dim, m.codebook_size, m.fingerprint, cfg.fsync, cfg.milvus_uri,
            cfg.repair_wal,
        ))  # fmt: skip
    except BaseException:
        await server.stop(0)
        raise
    embedder.start()
    service.ready = True
    for name in ("", SERVICE):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    engines = ", ".join(f"{m}: {e.name} {e.precision}" for m, e in embedder.engine_info())
    log.info("serving after %.1f s warm-up (%s)", time.perf_counter() - t0, engines)

    trimmer = asyncio.ensure_future(trim_every(TRIM_EVERY_S))
    await stop.wait()
    trimmer.cancel()
    log.info("draining: in-flight requests have %.0f s to finish", cfg.drain_s)
    service.draining = True
    for name in ("", SERVICE):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if http is not None:
        http[0].should_exit = True  # stops listening; requests in flight finish within drain_s
    await server.stop(cfg.drain_s)
    if http is not None:
        await http[1]
    await embedder.close()
    service.searcher.close()
    service.collections.close()  # snapshots the built-in collections
    log.info("stopped")
    return 0
