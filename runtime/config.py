"""Server configuration (docs/architecture.md §5): one frozen dataclass, every field settable by a
`python -m runtime serve` flag or a `TESSERA_<FIELD>` environment variable (flag wins).

    TESSERA_BUNDLE=/models/f8k TESSERA_PORT=50051 TESSERA_MAX_WAIT_MS=5 python -m runtime serve
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

Backend = Literal["auto", "onnxruntime", "tensorrt"]
ENGINE_BACKENDS: tuple[str, ...] = ("auto", "onnxruntime", "tensorrt")
INT8_MODES: tuple[str, ...] = ("off", "on", "auto")
# how a bare `--int8` and the booleans of TESSERA_INT8 read
INT8_WORDS = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off", "": "off"}
ENV_PREFIX = "TESSERA_"


@dataclass(frozen=True)
class ServeConfig:
    bundle: str = ""  # bundle directory (from `python -m export`)
    host: str = "127.0.0.1"  # bind address; 0.0.0.0 exposes the server beyond this machine
    port: int = 50051  # gRPC port; 0 picks a free one (logged)
    http_port: int = -1  # the HTTP/JSON API's port (OpenAI's /v1/embeddings, REST); -1 = off, 0 = any
    media_root: str = ""  # images the search page may show (GET /v1/media/PATH, under this folder only)
    reuse_port: bool = False  # share the port with servers that ask too (SO_REUSEPORT); a taken one stops
    tls_cert: str = ""  # server certificate chain (PEM); with tls_key both transports speak TLS only
    tls_key: str = ""  # the certificate's private key (PEM)
    tls_client_ca: str = ""  # require client certificates signed by this CA (mTLS)
    api_keys: str = ""  # key file (python -m runtime keys): every API call then needs a key of its scope
    insecure: bool = False  # no warning for binding beyond loopback without TLS or API keys
    reflection: str = "auto"  # gRPC server reflection: auto (on only when bound to loopback) | on | off
    metrics_host: str = "127.0.0.1"  # where /metrics listens (it carries no secrets; nobody outside needs it)
    backend: str = "auto"  # auto | onnxruntime | tensorrt
    int8: str = "off"  # int8 graphs, each checked on this CPU: on = refuse a failed check, auto = serve fp32
    max_batch_size: int = 32  # items per engine call; ≤ the bundle's max_batch
    max_wait_ms: float = 5.0  # longest an item waits for its batch to fill
    max_queue: int = 1024  # items waiting per modality; beyond -> RESOURCE_EXHAUSTED
    max_items_per_request: int = 256  # beyond -> INVALID_ARGUMENT
    max_request_bytes: int = 4 << 20  # beyond -> INVALID_ARGUMENT (gRPC itself refuses > 2x)
    max_image_pixels: int = 40_000_000  # decoded width*height cap (decompression bombs)
    max_inflight_mb: int = 256  # what requests hold at once (messages, decoded images); beyond it: refused
    stream_window_mb: int = 32  # an EmbedStream's share of it (streams hold at most half of it)
    max_concurrent_rpcs: int = 256  # RPCs at once; gRPC refuses more before reading them
    max_streams_per_connection: int = (
        0  # HTTP/2 streams one connection may open, 0 = gRPC's default (no limit)
    )
    max_heavy_read_mb_s: int = 32  # MB/s read of large requests (admission.HeavyReads), all; 0 = off
    admission_wait_ms: float = 1000.0  # how long a call waits for room in the in-flight budget
    large_image_pixels: int = 4_000_000  # images bigger than this decode on their own thread
    max_text_chars: int = 8192  # characters per text item
    max_batch_tokens: int = 0  # text token budget per batch (padded), 0 = max_batch_size * max_len
    engine_memory_mb: int = 128  # working memory one engine call may use; bigger batches run in several calls
    batch_lookahead: int = 8  # text: a full batch is drawn by length from this many batches queued; 1 = FIFO
    whole_text_batches: bool = False  # one engine call per text batch, not split by length (textsplit.py)
    cpu_threads: int = 0  # ONNX Runtime intra-op threads per engine, 0 = its default (all cores)
    cpu_spin: bool = False  # let ONNX Runtime's threads spin-wait (faster alone; steals the event loop's CPU)
    preprocess_threads: int = 4  # image decode / tokenise pool
    max_filter_bytes: int = 16 << 10  # a search or count filter's JSON, at most (INVALID_ARGUMENT beyond)
    max_filter_depth: int = 8  # levels of nested $and/$or/$not a filter may have
    search_threads: int = 0  # searches scanning at once, one thread each (runtime/searcher.py); 0 = cores
    metrics_port: int = -1  # Prometheus /metrics HTTP port; -1 = off, 0 = a free one (logged)
    drain_s: float = 30.0  # on SIGTERM: how long in-flight requests may take to finish
    data_dir: str = "tessera-data"  # collections live here (write-ahead logs, snapshots, milvus-lite db)
    fsync: str = "always"  # collection writes: always | interval (100 ms) | never (see runtime/index/wal.py)
    milvus_uri: str = ""  # Milvus for milvus-backed collections ("" = milvus-lite at DATA_DIR/milvus.db)
    repair_wal: bool = False  # move a corrupt log tail aside at start instead of refusing to start
    engine_cache: str = ""  # where TensorRT plans built at start go ("" = BUNDLE/../.tessera-engines)
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        int8 = str(self.int8).lower()  # True and False (as older callers pass) read as "true", "false"
        object.__setattr__(self, "int8", INT8_WORDS.get(int8, int8))
        if self.int8 not in INT8_MODES:
            raise ValueError(f"int8 {self.int8!r} is not one of {', '.join(INT8_MODES)}")
        if self.reflection not in ("auto", "on", "off"):
            raise ValueError(f"reflection {self.reflection!r} is not one of auto, on, off")
        if self.backend not in ENGINE_BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not one of {', '.join(ENGINE_BACKENDS)}")
        for name in ("max_batch_size", "max_queue", "max_items_per_request", "max_request_bytes",
                     "max_image_pixels", "max_text_chars", "preprocess_threads", "max_inflight_mb",
                     "stream_window_mb", "max_concurrent_rpcs", "engine_memory_mb",
                     "batch_lookahead", "max_filter_bytes", "max_filter_depth"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync {self.fsync!r} is not one of always, interval, never")
        if self.stream_window_mb << 20 < 3 * self.max_request_bytes:  # admission.receive_cost
            raise ValueError(
                f"stream_window_mb {self.stream_window_mb} cannot receive one request of max_request_bytes "
                f"{self.max_request_bytes:,} (it needs 3x that)"
            )
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be ≥ 0, got {self.max_wait_ms}")
        if self.search_threads < 0:
            raise ValueError(f"search_threads must be ≥ 0 (0 = all cores), got {self.search_threads}")


def _parse(kind: Any, raw: str, name: str) -> Any:
    if kind in (bool, "bool"):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{name}: {raw!r} is not a boolean")
    if kind in (int, "int"):
        return int(raw)
    if kind in (float, "float"):
        return float(raw)
    return raw


def load_config(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> ServeConfig:
    """Defaults <- TESSERA_* environment <- flags (None = not given)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(ServeConfig):
        env_name = ENV_PREFIX + f.name.upper()
        if env_name in environ:
            try:
                values[f.name] = _parse(f.type, environ[env_name], env_name)
            except ValueError as e:
                raise ValueError(f"{env_name}={environ[env_name]!r}: {e}") from e
        if flags.get(f.name) is not None:
            values[f.name] = flags[f.name]
    return dataclasses.replace(ServeConfig(), **values)
