"""TensorRT engines for the GPU this runs on, through TensorRT's Python API (imported lazily); shared
by `export --tensorrt` (build + parity) and the runtime (load, or build at start without blocking).

For each ONNX graph: parse, build with an optimisation profile for batch (1, max/2, max) and, for
text, sequence length (1, max/2, max), the asked precision (fp16 by default; fp32 layers stay
where TensorRT must), and a timing cache beside the engines (rebuilds reuse tactic timings). The
engine file name and its manifest record key it by model fingerprint, TensorRT version, GPU name
and compute capability, precision and profile, so a bundle carries engines for several GPUs and a
runtime picks the one built for its own.

After each build: parity against ONNX Runtime fp32 (min cosine ≥ 0.999) and a check, from the
engine inspector, that the engine really holds layers in the asked precision.

`TensorRTEngine` runs a plan with device memory from cuda-python (no torch): buffers sized for the
profile's largest shapes are allocated once, inputs and outputs are copied on one CUDA stream.
`HotSwapEngine` serves from ONNX Runtime while a missing plan for this GPU is built in a thread,
parity-checked against ONNX Runtime, then swapped in.

Verified where: this module is exercised only where `tensorrt` imports (see README "What has been
verified where"); the tests skip with the install hint elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from runtime.bundle import EngineRecord
from runtime.errors import MissingDependency

log = logging.getLogger(__name__)
INSTALL_HINT = (
    "TensorRT is not installed: on Jetson it comes with JetPack; on x86_64 servers "
    "`pip install tensorrt cuda-python` (NVIDIA's wheels) beside a CUDA driver"
)
MIN_COSINE = 0.999  # a plan must agree this well with ONNX Runtime fp32 before it serves


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise MissingDependency(INSTALL_HINT) from e
    return trt


def gpu_identity() -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of device 0, via TensorRT's CUDA bindings."""
    err, props = _cudart().cudaGetDeviceProperties(0)
    if int(err) != 0:
        raise RuntimeError(f"cudaGetDeviceProperties failed: {err}")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"{props.major}.{props.minor}"


def profile_shapes(inputs: dict[str, list[Any]], max_batch: int, max_len: int) -> dict[str, list[list[int]]]:
    """input name -> [min, opt, max] shapes, from the manifest's input specs and limits."""
    out = {}
    for name, shape in inputs.items():
        dims = []
        for axis in shape:
            if axis == "batch":
                dims.append((1, max(1, max_batch // 2), max_batch))
            elif axis == "sequence":
                dims.append((1, max(1, max_len // 2), max_len))
            else:
                dims.append((int(axis),) * 3)
        out[name] = [[d[i] for d in dims] for i in range(3)]
    return out


def engine_name(
    fingerprint: str, graph: str, trt_version: str, gpu: str, cc: str, precision: str, profile: dict
) -> str:
    key = json.dumps([fingerprint, graph, trt_version, gpu, cc, precision, profile], sort_keys=True)
    gpu_slug = "".join(c if c.isalnum() else "-" for c in gpu).strip("-").lower()
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"engines/{graph}.{gpu_slug}.sm{cc.replace('.', '')}.{precision}.{digest}.plan"


def build_engine(
    onnx_path: Path,
    out_path: Path,
    profile: dict[str, list[list[int]]],
    precision: str,
    timing_cache: Path,
) -> None:
    """Builds and writes one serialized engine (TensorRT 8.6-10.x Python API)."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 2 << 30)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # lets the inspector report precisions
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path.name}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(bytes(plan))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))


def engine_precisions(plan_path: Path) -> set[str]:
    """The set of layer precisions an engine holds (from the engine inspector's JSON)."""
    trt = import_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    found: set[str] = set()
    for layer in info.get("Layers", []):
        if isinstance(layer, dict):
            for tensor in layer.get("Outputs", []):
                fmt = str(tensor.get("Format/Datatype", ""))
                if "Half" in fmt or "FP16" in fmt:
                    found.add("fp16")
                elif "Float" in fmt or "FP32" in fmt:
                    found.add("fp32")
    return found


def engine_record(file: str, graph: str, gpu: str, cc: str, precision: str, profile: dict) -> EngineRecord:
    trt = import_tensorrt()
    return EngineRecord(file, graph, trt.__version__, gpu, cc, precision, profile)


def available() -> bool:
    """True where `tensorrt` and cuda-python import and a CUDA device answers."""
    try:
        import_tensorrt()
        gpu_identity()
    except Exception:  # no TensorRT, no cuda-python, no driver or no device
        return False
    return True


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _check(result: Any) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA runtime error {err}")
    return rest[0] if len(rest) == 1 else rest


class TensorRTEngine:
    """One deserialised plan, its execution context, device buffers for the largest profile shapes
    and a CUDA stream. Not thread-safe: the batcher calls it from one thread at a time."""

    def __init__(self, plan: Path, input_names: list[str], output_names: list[str], precision: str) -> None:
        trt, self.cudart = import_tensorrt(), _cudart()
        self.graph, self.precision = plan.name, precision
        self.name = f"tensorrt {trt.__version__}"
        self.input_names, self.output_names = input_names, output_names
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialise {plan}")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self.cudart.cudaStreamCreate())
        self.buffers: dict[str, int] = {}
        for name in input_names + output_names:
            if name in input_names:
                shape = self.engine.get_tensor_profile_shape(name, 0)[2]  # the profile's max
            else:
                shape = self._max_output_shape(name)
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self.buffers[name] = _check(self.cudart.cudaMalloc(int(np.prod(shape)) * dtype.itemsize))

    def _max_output_shape(self, name: str) -> tuple[int, ...]:
        for i in self.input_names:
            self.context.set_input_shape(i, tuple(self.engine.get_tensor_profile_shape(i, 0)[2]))
        return tuple(self.context.get_tensor_shape(name))

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        h2d = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.input_names:
            array = np.ascontiguousarray(feeds[name])
            self.context.set_input_shape(name, array.shape)
            _check(
                self.cudart.cudaMemcpyAsync(
                    self.buffers[name], array.ctypes.data, array.nbytes, h2d, self.stream
                )
            )
        for name, ptr in self.buffers.items():
            self.context.set_tensor_address(name, ptr)
        if not self.context.execute_async_v3(int(self.stream)):  # the cudaStream_t as an address
            raise RuntimeError(f"TensorRT execution failed ({self.graph})")
        outputs = []
        for name in self.output_names:
            out = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=np.float32)
            _check(
                self.cudart.cudaMemcpyAsync(out.ctypes.data, self.buffers[name], out.nbytes, d2h, self.stream)
            )
            outputs.append(out)
        _check(self.cudart.cudaStreamSynchronize(self.stream))
        return outputs

    def close(self) -> None:
        for ptr in self.buffers.values():
            self.cudart.cudaFree(ptr)
        self.buffers.clear()
        self.cudart.cudaStreamDestroy(self.stream)


def find_plan(bundle: Any, key: str, cache_dir: Path, precision: str = "fp16") -> tuple[Path, Path | None]:
    """(where this GPU's plan for graph `key` is or will be built, the bundle's plan if it has one)."""
    trt = import_tensorrt()
    gpu, cc = gpu_identity()
    m = bundle.manifest
    spec = m.graphs[key]
    profile = profile_shapes({t.name: t.shape for t in spec.inputs}, m.max_batch, m.text.max_len)
    name = engine_name(m.fingerprint, key, trt.__version__, gpu, cc, precision, profile)
    for record in m.engines:
        if record.file == name:
            return bundle.root / name, bundle.root / name
    cached = cache_dir / name
    return cached, (cached if cached.is_file() else None)


class HotSwapEngine:
    """Serves from `fallback` (ONNX Runtime) until a TensorRT plan built in a background thread
    passes parity; then every later batch runs on TensorRT. A failed build is logged and the
    fallback keeps serving."""

    def __init__(self, fallback: Any, build: Any) -> None:
        import threading

        self.current = fallback
        self.thread = threading.Thread(target=self._build, args=(build,), name="tensorrt-build", daemon=True)
        self.thread.start()

    @property
    def name(self) -> str:
        return self.current.name

    @property
    def precision(self) -> str:
        return self.current.precision

    @property
    def graph(self) -> str:
        return self.current.graph

    def _build(self, build: Any) -> None:
        try:
            self.current = build()
            log.info("TensorRT engine %s is serving", self.current.graph)
        except Exception:
            log.exception("TensorRT build failed; ONNX Runtime keeps serving")

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.current.run(feeds)


def engine_for(bundle: Any, key: str, cfg: Any, fallback: Any) -> Any:
    """A TensorRT engine for graph `key`: the plan for this GPU if the bundle or the cache has one,
    else `fallback()` now and a plan built in the background: a build never blocks serving."""
    spec = bundle.manifest.graphs[key]
    inputs, outputs = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
    cache_dir = Path(cfg.engine_cache) if cfg.engine_cache else bundle.root.parent / ".tessera-engines"
    target, found = find_plan(bundle, key, cache_dir)
    if found is not None:
        return TensorRTEngine(found, inputs, outputs, "fp16")
    serving = fallback()

    def build() -> TensorRTEngine:
        m = bundle.manifest
        profile = profile_shapes({t.name: t.shape for t in spec.inputs}, m.max_batch, m.text.max_len)
        tmp = target.with_suffix(".partial")
        build_engine(bundle.graph_path(key), tmp, profile, "fp16", cache_dir / "timing.cache")
        engine = TensorRTEngine(tmp, inputs, outputs, "fp16")
        _parity_with(engine, serving, spec, m)
        tmp.replace(target)
        return engine

    log.info("no TensorRT plan for %s on this GPU: serving ONNX Runtime while %s is built", key, target.name)
    return HotSwapEngine(serving, build)


def _parity_with(engine: TensorRTEngine, reference: Any, spec: Any, manifest: Any) -> None:
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        if t.dtype == "uint8":
            feeds[t.name] = rng.integers(0, 256, (4, *t.shape[1:]), dtype=np.uint8)
    if "input_ids" in [t.name for t in spec.inputs]:
        feeds["input_ids"] = rng.integers(5, 100, (4, 16), dtype=np.int64)
        feeds["attention_mask"] = np.ones((4, 16), dtype=np.int64)
    got, want = engine.run(feeds)[0], reference.run(feeds)[0]
    cos = float((got * want).sum(-1).min())  # both L2-normalised
    if cos < MIN_COSINE:
        raise RuntimeError(
            f"TensorRT plan {engine.graph}: min cosine {cos:.4f} to ONNX Runtime < {MIN_COSINE}"
        )
