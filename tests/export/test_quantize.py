"""int8 graphs compute exact integer products on every CPU: run with the session config their scheme
records (export/quantize.py), ONNX Runtime's output on this CPU equals the same quantised
computation done exactly in float64. On an x86 CPU without VNNI, the same graph without that config
shows what it prevents: the u8s8 kernel's int16 pair-sums clip, and the check fails widely."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.quantize import DEFAULT_WEIGHTS, WEIGHTS, quantize_graph
from runtime.cpu import cpu_isa

K, N = 64, 16  # inner and output width of the one-MatMul graph


def one_matmul(weight: np.ndarray, path: Path) -> Path:
    """An fp32 graph y = x @ W: x (B, K), W (K, N)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")
    graph = helper.make_graph([node], "one_matmul", [x], [y], [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def run(path: Path, x: np.ndarray, config: dict[str, str] | None = None) -> np.ndarray:
    """As the server runs it: every graph optimisation on (ONNX Runtime fuses the int8 nodes), the
    scheme's session config (None: the shipped scheme's)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in (WEIGHTS[DEFAULT_WEIGHTS].session_config if config is None else config).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def exact(path: Path, x: np.ndarray) -> np.ndarray:
    """The int8 graph's arithmetic in float64 with exact integer sums: activations quantised as
    DynamicQuantizeLinear does (uint8, range widened to hold 0), weights as stored in the graph."""
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    q_w = next(w for w in weights.values() if w.dtype == np.int8 and w.ndim == 2).astype(np.int64)  # (K, N)
    scale_w = next(w for w in weights.values() if w.dtype == np.float32 and w.shape == (N,))  # (N,)
    zero_w = next(
        (w for w in weights.values() if w.dtype == np.int8 and w.shape == (N,)), np.zeros(N, np.int8)
    )
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale_x = np.float32((hi - lo) / 255)
    zero_x = int(np.clip(np.round(-lo / scale_x), 0, 255))
    q_x = np.clip(np.round(x / scale_x) + zero_x, 0, 255).astype(np.int64)  # (B, K)
    q_w = q_w - zero_w.astype(np.int64)  # (K, N), each channel about its own zero point
    return ((q_x - zero_x) @ q_w).astype(np.float64) * float(scale_x) * scale_w.astype(np.float64)  # (B, N)


@pytest.fixture
def worst_case(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Weights whose every column is positive and activations near their largest: each pair of
    uint8 x int8 products is as large as the weight range allows."""
    rng = np.random.default_rng(0)
    weight = rng.uniform(0.9, 1.0, (K, N)).astype(np.float32)  # (K, N): every int8 weight near its largest
    x = rng.uniform(0.9, 1.0, (4, K)).astype(np.float32)  # (B, K)
    x[:, 0] = 0.0  # the range starts at 0: zero point 0, every other activation quantises near 255
    return one_matmul(weight, tmp_path / "fp32.onnx"), x


def test_int8_weights_use_the_whole_range_and_record_what_computes_them_exactly(tmp_path: Path) -> None:
    weight = np.random.default_rng(1).normal(size=(K, N)).astype(np.float32)  # (K, N): both signs
    source, target = one_matmul(weight, tmp_path / "fp32.onnx"), tmp_path / "int8.onnx"
    notes = quantize_graph(source, target)
    assert notes["weight_range"] == [-128, 127]
    assert notes["session_config"] == {"session.x64quantprecision": "1"}
    q_w = next(
        numpy_helper.to_array(i)
        for i in onnx.load(str(target)).graph.initializer
        if i.data_type == TensorProto.INT8 and len(i.dims) == 2  # (K, N); the zero points are (N,)
    )
    assert (q_w.min(axis=0) == -128).all() and (q_w.max(axis=0) == 127).all()  # each channel, every level


def test_int8_matmul_equals_exact_integer_arithmetic_on_this_cpu(worst_case: tuple[Path, np.ndarray]) -> None:
    source, x = worst_case
    target = source.with_name("int8.onnx")
    quantize_graph(source, target)
    got, want = run(target, x), exact(target, x)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), f"on {cpu_isa()}"


@pytest.mark.skipif(
    cpu_isa().arch != "x86_64" or cpu_isa().vnni,
    reason=f"needs an x86 CPU without VNNI, where uint8 x int8 pair-sums saturate (this one: {cpu_isa()})",
)
def test_without_its_session_config_the_int8_graph_saturates_on_x86_without_vnni(
    worst_case: tuple[Path, np.ndarray],
) -> None:
    """What the recorded session config prevents, shown by the check above failing without it."""
    source, x = worst_case
    target = source.with_name("full.onnx")
    quantize_graph(source, target)
    got, want = run(target, x, config={}), exact(target, x)  # without the session config it records
    assert np.abs(got - want).max() > 0.1 * np.abs(want).max()  # pair-sums near 65,280 clipped to 32,767


@pytest.mark.skipif(
    cpu_isa().arch != "x86_64" or not cpu_isa().vnni,
    reason=f"needs an x86 CPU with VNNI, whose uint8 x int8 products sum in int32 (this one: {cpu_isa()})",
)
def test_on_a_vnni_cpu_the_int8_graph_is_exact_without_its_session_config(
    worst_case: tuple[Path, np.ndarray],
) -> None:
    """Why the runtime leaves the switch off there (runtime.cpu.needed_session_config): the u8s8
    kernel is exact by itself, and the switch changes no bit of the output."""
    source, x = worst_case
    target = source.with_name("full.onnx")
    quantize_graph(source, target)
    got, want = run(target, x, config={}), exact(target, x)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert np.array_equal(got, run(target, x))
