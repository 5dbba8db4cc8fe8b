"""Engines (docs/architecture.md §5): the one interface the batcher calls, and how one is chosen.

    Engine.run({input name: array}) -> [embedding (B, d), code_scores (B, K)]

- `OnnxRuntimeEngine`: a session over a bundle graph. Providers are chosen by what truly works,
  not by what `get_available_providers()` lists (onnxruntime-gpu lists CUDA and TensorRT on a
  machine without a GPU): each candidate is tried by creating the session and reading back the
  providers it really bound.
- `runtime.tensorrt.TensorRTEngine`: a native TensorRT plan for this GPU (imported lazily).
- `open_engines`: the engines of a bundle for a `ServeConfig`'s backend and int8 choice, each with
  the items one call may take (measured as it opens, before anything else runs on it:
  runtime/footprint.py). An int8 engine is served only once it has passed its check on this CPU
  (runtime/selfcheck.py); one that fails stops the start (`--int8`), or is replaced by its fp32
  graph (`--int8=auto`), said in the log, in `Info` and in the metrics.

Engines are called from a worker thread (ONNX Runtime and TensorRT release the GIL), one batch at a
time per engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from runtime.bundle import Bundle, GraphSpec
from runtime.config import ServeConfig
from runtime.cpu import cpu_isa, needed_session_config
from runtime.errors import MissingDependency, PrecisionRefused
from runtime.footprint import items_per_call, memory_per_item
from runtime.selfcheck import PrecisionCheck, Reference, check_engine, load_reference

log = logging.getLogger(__name__)
ORT_HINT = (
    "ONNX Runtime is not installed: `pip install 'tessera-embed[cpu]'` (or `[gpu]` for onnxruntime-gpu)"
)
GPU_PROVIDERS = ("CUDAExecutionProvider",)  # ONNX Runtime's TensorRT EP is left out: use native TensorRT


class Engine(Protocol):
    name: str  # what the Info RPC reports, e.g. "onnxruntime 1.32.0 [CPUExecutionProvider]"
    precision: str
    graph: str

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def import_onnxruntime() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise MissingDependency(ORT_HINT) from e
    return ort


def session_options(
    cpu_threads: int = 0, cpu_spin: bool = False, config: dict[str, str] | None = None
) -> Any:
    """ONNX Runtime session options as the server uses them: every graph optimisation, idle workers
    asleep unless `cpu_spin` (they would spin on the cores the event loop needs), and the entries
    a graph asks for (GraphSpec.session_config: an exact int8 kernel) that this CPU needs."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if cpu_threads > 0:
        options.intra_op_num_threads = cpu_threads
    if not cpu_spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for entry, value in needed_session_config(config or {}, cpu_isa()).items():
        options.add_session_config_entry(entry, value)
    return options


class OnnxRuntimeEngine:
    def __init__(
        self, bundle: Bundle, key: str, use_gpu: bool, cpu_threads: int, cpu_spin: bool = False
    ) -> None:
        ort = import_onnxruntime()
        spec: GraphSpec = bundle.manifest.graphs[key]
        self.graph, self.precision = spec.file, spec.precision
        self.input_names = [t.name for t in spec.inputs]
        self.output_names = [t.name for t in spec.outputs]
        options = session_options(cpu_threads, cpu_spin, spec.session_config)
        path = str(bundle.graph_path(key))
        disabled = list(spec.disabled_optimizers)  # what the bundle measured slower for this graph
        self.session = None
        candidates = [p for p in GPU_PROVIDERS if use_gpu and p in ort.get_available_providers()]
        for provider in candidates:
            try:
                session = ort.InferenceSession(
                    path, options, providers=[provider, "CPUExecutionProvider"], disabled_optimizers=disabled
                )
            except Exception as e:  # a listed provider whose libraries or device are missing
                log.info("%s: %s unusable (%s)", spec.file, provider, e)
                continue
            if session.get_providers()[0] == provider:  # ORT falls back to CPU silently
                self.session = session
                break
            log.info("%s: %s listed but did not bind; falling back", spec.file, provider)
        if self.session is None:
            self.session = ort.InferenceSession(
                path, options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
            )
        self.providers = self.session.get_providers()
        self.name = f"onnxruntime {ort.__version__} [{self.providers[0]}]"

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds)


@dataclass(frozen=True)
class EngineSet:
    image: Engine
    text: Engine
    calls: dict[str, int]  # modality -> the most items one engine call takes
    checks: dict[str, PrecisionCheck] = field(default_factory=dict)  # modality -> its int8 check
    notes: dict[str, str] = field(default_factory=dict)  # modality -> why it is not what was asked for


def zero_feeds(bundle: Bundle, modality: str, n: int) -> dict[str, np.ndarray]:
    """n items of the largest shape a modality's engine takes (text at its maximum length)."""
    m = bundle.manifest
    if modality == "image":
        return {"pixels": np.zeros((n, m.image.size_px, m.image.size_px, 3), dtype=np.uint8)}  # (n, S, S, 3)
    ids = np.ones((n, m.text.max_len), dtype=np.int64)  # (n, L)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def measured(engine: Engine, bundle: Bundle, modality: str, cfg: ServeConfig) -> int:
    """Items per call for a freshly opened engine: its working memory per item against the
    --engine-memory-mb budget (runtime/footprint.py). Run before anything else grows its arena."""
    per_item = memory_per_item(lambda n: engine.run(zero_feeds(bundle, modality, n)), cfg.max_batch_size)
    calls = items_per_call(per_item, cfg.max_batch_size, cfg.engine_memory_mb << 20)
    log.info("%s engine: %.1f MB of working memory per item; at most %d items per call",
             modality, per_item / 1e6, calls)  # fmt: skip
    return calls


def _measured_set(bundle: Bundle, cfg: ServeConfig, image: Engine, text: Engine) -> EngineSet:
    return EngineSet(image, text, {"image": measured(image, bundle, "image", cfg),
                                   "text": measured(text, bundle, "text", cfg)})  # fmt: skip


def _onnxruntime(bundle: Bundle, cfg: ServeConfig) -> EngineSet:
    """ONNX Runtime on the best provider that truly binds (a GPU's, else the CPU)."""
    image, text = (
        OnnxRuntimeEngine(bundle, k, True, cfg.cpu_threads, cfg.cpu_spin) for k in ("image", "text")
    )
    return _measured_set(bundle, cfg, image, text)


def _tensorrt(bundle: Bundle, cfg: ServeConfig) -> EngineSet:
    """Native TensorRT plans for this GPU: the bundle's or the cache's, else ONNX Runtime while one
    is built in the background (runtime/tensorrt.py); fails with the install hint where TensorRT
    does not import."""
    from runtime import tensorrt

    tensorrt.import_tensorrt()  # raises MissingDependency with the install hint

    def fallback(key: str) -> Engine:
        return OnnxRuntimeEngine(bundle, key, True, cfg.cpu_threads, cfg.cpu_spin)

    image, text = (tensorrt.engine_for(bundle, k, cfg, lambda k=k: fallback(k)) for k in ("image", "text"))
    return _measured_set(bundle, cfg, image, text)


def _auto(bundle: Bundle, cfg: ServeConfig) -> EngineSet:
    """TensorRT where it imports and a plan for this GPU can be had, else ONNX Runtime."""
    from runtime import tensorrt

    return _tensorrt(bundle, cfg) if tensorrt.available() else _onnxruntime(bundle, cfg)


BACKENDS: dict[str, Callable[[Bundle, ServeConfig], EngineSet]] = {
    "auto": _auto,
    "onnxruntime": _onnxruntime,
    "tensorrt": _tensorrt,
}  # ServeConfig checks --backend against runtime.config.ENGINE_BACKENDS, these names


def open_engines(bundle: Bundle, cfg: ServeConfig) -> EngineSet:
    """The engines for cfg.backend (`BACKENDS`); with cfg.int8 on or auto, the int8 graphs on the
    CPU, checked first (`_open_int8`)."""
    if cfg.int8 == "off":
        return BACKENDS[cfg.backend](bundle, cfg)
    if cfg.backend == "tensorrt":
        raise ValueError(
            "--int8 selects the bundle's int8 ONNX graphs (CPU); it does not combine with tensorrt"
        )
    return _open_int8(bundle, cfg)


def unprovable(bundle: Bundle) -> str | None:
    """Why this bundle's int8 graphs cannot be checked on this machine, or None when they can."""
    missing = [k for k in ("image_int8", "text_int8") if k not in bundle.manifest.graphs]
    if missing:
        return f"bundle {bundle.root} has no {', '.join(missing)} graph (re-export it with --int8)"
    if bundle.manifest.reference is None:
        return (
            f"bundle {bundle.root} has no reference outputs to check int8 against (re-export it with --int8)"
        )
    return None


def checked_int8(
    bundle: Bundle, modality: str, reference: Reference, cfg: ServeConfig
) -> tuple[OnnxRuntimeEngine, int, PrecisionCheck]:
    """A modality's int8 engine on the CPU, its items per call, and its check on the bundle's
    reference (run in calls of that size, as the server would)."""
    engine = OnnxRuntimeEngine(bundle, f"{modality}_int8", False, cfg.cpu_threads, cfg.cpu_spin)
    calls = measured(engine, bundle, modality, cfg)
    return engine, calls, check_engine(engine, reference, modality, "int8", calls)


def _open_int8(bundle: Bundle, cfg: ServeConfig) -> EngineSet:
    """int8 engines on the CPU, each checked against the bundle's fp32 reference first. A failed
    check raises PrecisionRefused (int8 "on"), or (int8 "auto") that modality serves its fp32 graph."""
    engines: dict[str, Engine] = {}
    calls: dict[str, int] = {}
    checks: dict[str, PrecisionCheck] = {}
    notes: dict[str, str] = {}

    def fall_back(modality: str, why: str) -> None:
        if cfg.int8 != "auto":
            raise PrecisionRefused(
                f"{why}; serve fp32 (without --int8), or pass --int8=auto to fall back to it"
            )
        log.warning("%s; serving the %s encoder in fp32 (--int8=auto)", why, modality)
        notes[modality] = f"int8 not served: {why}"
        engines[modality] = OnnxRuntimeEngine(bundle, modality, False, cfg.cpu_threads, cfg.cpu_spin)
        calls[modality] = measured(engines[modality], bundle, modality, cfg)

    if (why := unprovable(bundle)) is not None:
        for modality in ("image", "text"):
            fall_back(modality, why)
        return EngineSet(engines["image"], engines["text"], calls, checks, notes)
    reference = load_reference(bundle)
    assert reference is not None  # unprovable() found the manifest naming one
    for modality in ("image", "text"):
        engine, engine_calls, check = checked_int8(bundle, modality, reference, cfg)
        checks[modality] = check
        if check.passed:
            log.info("%s", check.describe())
            engines[modality], calls[modality] = engine, engine_calls
        else:
            del engine  # its arena goes with it
            fall_back(modality, check.describe())
    return EngineSet(engines["image"], engines["text"], calls, checks, notes)
