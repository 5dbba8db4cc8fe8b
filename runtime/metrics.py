"""Prometheus metrics (docs/architecture.md §5), on their own registry, served over HTTP by
`python -m runtime serve --metrics-port N`:

    tessera_requests_total{transport, method, code}  calls by status (gRPC's code names, both transports)
    tessera_request_seconds{transport, method}    call latency histogram
    tessera_batch_size{modality}                  items per batch (histogram)
    tessera_batch_padded_tokens{modality}         a text batch's tokens, padded to its longest (histogram)
    tessera_engine_calls_total{modality}          engine calls (a text batch split by length runs several)
    tessera_engine_tokens_total{modality}         token positions the text engine ran, padding included
    tessera_inference_seconds{modality}           a batch's engine time, all its calls (histogram)
    tessera_inference_items_total{modality}       items that reached the engine
    tessera_queue_depth{modality}                 items waiting (gauge)
    tessera_dropped_items_total{modality, reason} queue_full | deadline | cancelled
    tessera_precision_check_min_cosine{modality, precision}  a graph's check on this CPU (selfcheck.py)
    tessera_int8_fallback{modality}               1: int8 was asked for, failed its check, fp32 serves
    process_resident_memory_bytes, ...            the process (prometheus_client's process collector)
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from runtime.selfcheck import PrecisionCheck

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # resident memory, CPU seconds, open files
        self.requests = Counter(
            "tessera_requests",
            "calls by transport, method and status",
            ["transport", "method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "tessera_request_seconds",
            "call latency",
            ["transport", "method"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "tessera_batch_size", "items per batch", ["modality"], buckets=BATCH_BUCKETS, registry=r
        )
        self.padded_tokens = Histogram(
            "tessera_batch_padded_tokens", "a text batch's tokens, padded to its longest", ["modality"],
            buckets=(16, 64, 256, 1024, 4096, 16384), registry=r,
        )  # fmt: skip
        self.inference = Histogram(
            "tessera_inference_seconds",
            "a batch's engine time, all its calls",
            ["modality"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.items = Counter(
            "tessera_inference_items", "items that reached the engine", ["modality"], registry=r
        )
        self.engine_calls = Counter(
            "tessera_engine_calls", "engine calls (a text batch split by length runs several)",
            ["modality"], registry=r,
        )  # fmt: skip
        self.engine_tokens = Counter(
            "tessera_engine_tokens", "token positions the text engine ran, padding included",
            ["modality"], registry=r,
        )  # fmt: skip
        self.depth_gauge = Gauge("tessera_queue_depth", "items waiting for a batch", ["modality"], registry=r)
        self.dropped_items = Counter(
            "tessera_dropped_items", "items dropped before inference", ["modality", "reason"], registry=r
        )
        self.check_cosine = Gauge(
            "tessera_precision_check_min_cosine", "a lower-precision graph's least cosine to the bundle's "
            "fp32 reference, measured on this CPU at start", ["modality", "precision"], registry=r,
        )  # fmt: skip
        self.int8_fallback = Gauge(
            "tessera_int8_fallback", "1 where int8 was asked for, failed its check and fp32 serves instead",
            ["modality"], registry=r,
        )  # fmt: skip

        self._rpc_children: dict[
            tuple[str, str, str], tuple[Any, Any]
        ] = {}  # labels() costs a lock and a dict

    def rpc_done(self, method: str, code: str, seconds: float, transport: str = "grpc") -> None:
        """One finished call: counted by transport, method and status, its latency observed."""
        key = (transport, method, code)
        children = self._rpc_children.get(key)
        if children is None:
            children = self.requests.labels(*key), self.latency.labels(transport, method)
            self._rpc_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def engines_opened(self, checks: dict[str, PrecisionCheck], fell_back: set[str]) -> None:
        """The start's precision checks, and the modalities serving fp32 in place of int8."""
        for modality, check in checks.items():
            self.check_cosine.labels(modality, check.precision).set(check.min_cosine)
        for modality in checks.keys() | fell_back:
            self.int8_fallback.labels(modality).set(1 if modality in fell_back else 0)

    def observer(self, modality: str) -> BatcherMetrics:
        return BatcherMetrics(self, modality)

    def serve(self, host: str, port: int) -> int:
        """Starts the metrics HTTP server in a thread: /metrics, 404 anywhere else. Returns its port
        (port 0 picks one)."""
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is here")
                    return
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
                pass

        server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        return int(server.server_address[1])


class BatcherMetrics:
    """The `runtime.batcher.BatchObserver` of one modality."""

    def __init__(self, metrics: Metrics, modality: str) -> None:
        self.m, self.modality = metrics, modality
        self.text = modality == "text"
        self.batch_size = metrics.batch_size.labels(modality)  # the children, bound once
        self.inference = metrics.inference.labels(modality)
        self.items = metrics.items.labels(modality)
        self.padded_tokens = metrics.padded_tokens.labels(modality)
        self.engine_calls = metrics.engine_calls.labels(modality)
        self.engine_tokens = metrics.engine_tokens.labels(modality)
        self.depth_gauge = metrics.depth_gauge.labels(modality)

    def batch(self, size: int, padded_cost: int, inference_s: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(inference_s)
        self.items.inc(size)
        if self.text:
            self.padded_tokens.observe(padded_cost)

    def engine_call(self, rows: int, length: int) -> None:
        """One engine call on `rows` items, each padded to `length` tokens (0 for images)."""
        self.engine_calls.inc()
        if length:
            self.engine_tokens.inc(rows * length)

    def dropped(self, reason: str, n: int) -> None:
        self.m.dropped_items.labels(self.modality, reason).inc(n)

    def depth(self, n: int) -> None:
        self.depth_gauge.set(n)


def parse_metrics(text: str) -> dict[str, float]:
    """`name{labels}` -> value from the Prometheus text format (for tests, benchmarks, the demo)."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
