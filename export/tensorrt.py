"""TensorRT engines for the GPU this runs on, through TensorRT's Python API (imported lazily).

For each ONNX graph: parse, build with an optimisation profile for batch (1, max/2, max) and, for
text, sequence length (1, max/2, max), the asked precision (fp16 by default; fp32 layers stay
where TensorRT must), and a timing cache beside the engines (rebuilds reuse tactic timings). The
engine file name and its manifest record key it by model fingerprint, TensorRT version, GPU name
and compute capability, precision and profile, so a bundle carries engines for several GPUs and a
runtime picks the one built for its own.

After each build: parity against ONNX Runtime fp32 (min cosine ≥ 0.999) and a check, from the
engine inspector, that the engine really holds layers in the asked precision.

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
    "`pip install tensorrt` (NVIDIA's wheels) beside a CUDA driver"
)


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise MissingDependency(INSTALL_HINT) from e
    return trt


def gpu_identity() -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of device 0, via TensorRT's CUDA bindings."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    err, props = cudart.cudaGetDeviceProperties(0)
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


def run_engine(plan_path: Path, feeds: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
    """Runs an engine once on host arrays (for parity), with torch handling device memory."""
    import torch

    trt = import_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    context = engine.create_execution_context()
    buffers = {}
    for name, array in feeds.items():
        buffers[name] = torch.from_numpy(np.ascontiguousarray(array)).cuda()
        context.set_input_shape(name, tuple(array.shape))
        context.set_tensor_address(name, buffers[name].data_ptr())
    for name in output_names:
        shape = tuple(context.get_tensor_shape(name))
        buffers[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
        context.set_tensor_address(name, buffers[name].data_ptr())
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise RuntimeError(f"TensorRT execution failed for {plan_path.name}")
    stream.synchronize()
    return [buffers[n].cpu().numpy() for n in output_names]


def engine_record(file: str, graph: str, gpu: str, cc: str, precision: str, profile: dict) -> EngineRecord:
    trt = import_tensorrt()
    return EngineRecord(file, graph, trt.__version__, gpu, cc, precision, profile)
