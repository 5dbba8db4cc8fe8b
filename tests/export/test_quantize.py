"""int8 graphs compute exact integer products on every CPU: their weights lie in the range where no
kernel saturates (export/quantize.py), so ONNX Runtime's output on this CPU equals the same
quantised computation done exactly in float64. On an x86 CPU without VNNI, full-range weights show
what the range prevents: the same check fails by a wide margin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.quantize import WEIGHT_RANGE, quantize_graph
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


def run(path: Path, x: np.ndarray) -> np.ndarray:
    """As the server runs it: every graph optimisation on (ONNX Runtime fuses the int8 nodes)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def exact(path: Path, x: np.ndarray) -> np.ndarray:
    """The int8 graph's arithmetic in float64 with exact integer sums: activations quantised as
    DynamicQuantizeLinear does (uint8, range widened to hold 0), weights as stored in the graph."""
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    q_w = next(w for w in weights.values() if w.dtype == np.int8 and w.ndim == 2).astype(np.int64)  # (K, N)
    scale_w = next(w for w in weights.values() if w.dtype == np.float32 and w.shape == (N,))  # (N,)
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale_x = np.float32((hi - lo) / 255)
    zero_x = int(np.clip(np.round(-lo / scale_x), 0, 255))
    q_x = np.clip(np.round(x / scale_x) + zero_x, 0, 255).astype(np.int64)  # (B, K)
    return ((q_x - zero_x) @ q_w).astype(np.float64) * float(scale_x) * scale_w.astype(np.float64)  # (B, N)


@pytest.fixture
def worst_case(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Weights whose every column is positive and activations near their largest: each pair of
    uint8 x int8 products is as large as the weight range allows."""
    rng = np.random.default_rng(0)
    weight = rng.uniform(0.5, 1.0, (K, N)).astype(np.float32)  # (K, N)
    x = rng.uniform(0.9, 1.0, (4, K)).astype(np.float32)  # (B, K)
    x[:, 0] = 0.0  # the range starts at 0: zero point 0, every other activation quantises near 255
    return one_matmul(weight, tmp_path / "fp32.onnx"), x


def test_int8_weights_stay_in_the_range_no_kernel_saturates(worst_case: tuple[Path, np.ndarray]) -> None:
    source, _ = worst_case
    target = source.with_name("int8.onnx")
    notes = quantize_graph(source, target)
    assert notes["weight_range"] == list(WEIGHT_RANGE)
    q_w = next(
        numpy_helper.to_array(i)
        for i in onnx.load(str(target)).graph.initializer
        if i.data_type == TensorProto.INT8 and len(i.dims) == 2  # (K, N); the zero points are (N,)
    )
    assert WEIGHT_RANGE[0] <= q_w.min() and q_w.max() <= WEIGHT_RANGE[1]
    assert q_w.max() == WEIGHT_RANGE[1]  # per channel, each column's largest weight takes the top
    assert 2 * 255 * max(abs(b) for b in WEIGHT_RANGE) <= np.iinfo(np.int16).max  # VPMADDUBSW's pair-sum


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
def test_full_range_int8_weights_saturate_on_x86_without_vnni(worst_case: tuple[Path, np.ndarray]) -> None:
    """What the 7-bit range prevents, shown by the check above failing on full-range weights."""
    source, x = worst_case
    target = source.with_name("full.onnx")
    assert quantize_graph(source, target, weights="s8-8bit")["weight_range"] == [-127, 127]
    got, want = run(target, x), exact(target, x)
    assert np.abs(got - want).max() > 0.1 * np.abs(want).max()  # pair-sums of ~64,770 clipped to 32,767
