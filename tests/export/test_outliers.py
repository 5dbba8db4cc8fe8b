"""FFN outlier channels split out before int8 (export/outliers.py), on a hand-built BERT-style FFN:
the rewritten fp32 graph computes the same outputs, and the int8 graph gets closer to fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.outliers import find_feed_forwards, split_ffn_outliers
from export.quantize import quantize_graph

WIDTH, HIDDEN, OUTLIER = 32, 128, 7  # the hidden channel made 40x larger than the rest


def ffn_graph(path: Path) -> None:
    """Y = GELU(X W1 + b1) W2 + b2 + X, GELU spelled as torch.onnx exports erf-GELU."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.2, (WIDTH, HIDDEN)).astype(np.float32)  # (W, I)
    w1[:, OUTLIER] *= 40.0
    w2 = rng.normal(0, 0.2, (HIDDEN, WIDTH)).astype(np.float32)  # (I, W)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, HIDDEN).astype(np.float32), "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, WIDTH).astype(np.float32), "b2"),
        numpy_helper.from_array(np.array(np.sqrt(2.0), np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a0"], name="m1"),
        helper.make_node("Add", ["b1", "a0"], ["a"], name="bias1"),
        helper.make_node("Div", ["a", "sqrt2"], ["d"], name="div"),
        helper.make_node("Erf", ["d"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "one"], ["e1"], name="add1"),
        helper.make_node("Mul", ["a", "e1"], ["g0"], name="mul"),
        helper.make_node("Mul", ["g0", "half"], ["h"], name="mul_1"),
        helper.make_node("MatMul", ["h", "w2"], ["y0"], name="m2"),
        helper.make_node("Add", ["b2", "y0"], ["y1"], name="bias2"),
        helper.make_node("Add", ["y1", "x"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes,
        "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", WIDTH])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def run(path: Path | bytes, x: np.ndarray) -> np.ndarray:
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def inputs(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (4, 12, WIDTH)).astype(np.float32)  # (B, L, W)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def test_the_outlier_channel_moves_to_an_fp32_branch_and_outputs_are_unchanged(tmp_path: Path) -> None:
    ffn_graph(tmp_path / "ffn.onnx")
    model = onnx.load(str(tmp_path / "ffn.onnx"))
    assert len(find_feed_forwards(model.graph)) == 1
    split, fp32 = split_ffn_outliers(model, [{"x": inputs(1)}])
    assert split == [[OUTLIER]] and len(fp32) == 2
    onnx.checker.check_model(model)
    x = inputs(2)
    rewritten = model.SerializeToString()
    assert np.abs(run(rewritten, x) - run(tmp_path / "ffn.onnx", x)).max() < 1e-4
    # the main path's hidden activation no longer holds the outlier
    model.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hidden = session.run(["h"], {"x": x})[0]  # (B, L, I)
    assert np.all(hidden[..., OUTLIER] == 0) and np.abs(hidden).max() < 10


def test_splitting_brings_int8_closer_to_fp32(tmp_path: Path) -> None:
    ffn_graph(tmp_path / "ffn.onnx")
    plain = quantize_graph(tmp_path / "ffn.onnx", tmp_path / "plain.onnx")
    split = quantize_graph(tmp_path / "ffn.onnx", tmp_path / "split.onnx", calibration=[{"x": inputs(1)}])
    assert plain["ffn_outlier_channels"] == [] and split["ffn_outlier_channels"] == [[OUTLIER]]
    x = inputs(3)
    want = run(tmp_path / "ffn.onnx", x)
    got_plain, got_split = run(tmp_path / "plain.onnx", x), run(tmp_path / "split.onnx", x)
    err_plain, err_split = np.abs(got_plain - want).mean(), np.abs(got_split - want).mean()
    assert err_split < 0.5 * err_plain, (err_plain, err_split)
    assert min_cosine(got_split, want) > min_cosine(got_plain, want)
    assert not list(tmp_path.glob("*.staged"))


def test_a_block_whose_hidden_tensor_is_read_elsewhere_is_left_alone(tmp_path: Path) -> None:
    ffn_graph(tmp_path / "ffn.onnx")
    model = onnx.load(str(tmp_path / "ffn.onnx"))
    model.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, None))  # h is an output
    assert find_feed_forwards(model.graph) == []
