"""Outlier channels of a transformer's feed-forward blocks, kept out of int8.

Dynamic int8 quantises each activation tensor with one scale, set by its largest value. In
MiniLM-L6 the input of each FFN's second MatMul (the GELU output) has one or two channels far
above the rest, so every other channel is quantised with a step many times coarser than it needs,
and the int8 text embedding drifts from fp32 (docs/decisions.md §5 has the measurements).

`split_ffn_outliers` finds those channels on calibration inputs and moves them to a small fp32
side branch, once, in the graph (the decomposition of LLM.int8(), Dettmers et al. 2022, with the
channels fixed at export time):

    a = X W1 + b1;  h = GELU(a);  Y = h W2 + b2
    ->  W1[:, o] = 0, b1[o] = 0     (GELU(0) = 0, so h[:, o] = 0 and drops out of h's int8 range)
        Y = h W2 + b2 + GELU(X W1[:, o] + b1[o]) W2[o, :]     (the side branch, fp32, k = |o| <= 2)

In exact arithmetic the graph computes the same Y. The side branch costs two narrow MatMuls of
width k per layer, little beside the accuracy it buys (docs/decisions.md §5).
Only FFNs of the erf-GELU form BERT exports (Div, Erf, Add, Mul, Mul) are touched.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

OUTLIER_RATIO = 4.0  # a channel is an outlier when its calibration max exceeds 4x the median channel's
MAX_OUTLIERS = 2  # per FFN: the largest ones; more would make the side branch a real cost
ERF_GELU = Counter({"Div": 1, "Erf": 1, "Add": 1, "Mul": 2})


@dataclass(frozen=True)
class FeedForward:
    m1: onnx.NodeProto  # X W1
    b1: onnx.NodeProto  # + b1 (Add with an initializer)
    m2: onnx.NodeProto  # h W2, h = GELU(a)
    out: onnx.NodeProto  # the last node of the block: + b2 when there is one, else m2


def split_ffn_outliers(
    model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]
) -> tuple[list[list[int]], list[str]]:
    """Rewrites `model` in place. Returns (the channels split out per FFN, in graph order; the names
    of the side-branch MatMuls, which must stay fp32)."""
    graph = model.graph
    blocks = find_feed_forwards(graph)
    if not blocks:
        return [], []
    peaks = channel_max(model, [b.m2.input[0] for b in blocks], feeds)
    weights = {i.name: i for i in graph.initializer}
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    split, fp32 = [], []
    for n, block in enumerate(blocks):
        peak = peaks[block.m2.input[0]]  # (I,)
        top = np.argsort(-peak)[:MAX_OUTLIERS]
        channels = sorted(int(c) for c in top if peak[c] > OUTLIER_RATIO * np.median(peak))
        split.append(channels)
        if channels:
            fp32 += _split(graph, weights, block, np.array(channels), f"/ffn_outliers.{n}")
    return split, fp32


def find_feed_forwards(graph: onnx.GraphProto) -> list[FeedForward]:
    """MatMul -> Add(bias) -> erf-GELU -> MatMul [-> Add(bias)] blocks whose inner tensors feed
    nothing else and whose weights are used once (they are edited in place)."""
    weights = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    uses = Counter(i for n in graph.node for i in n.input)
    outputs = {o.name for o in graph.output}

    def weight_matmul(node: onnx.NodeProto | None) -> bool:
        return (
            node is not None
            and node.op_type == "MatMul"
            and node.input[1] in weights
            and uses[node.input[1]] == 1
        )

    def bias_add(node: onnx.NodeProto | None) -> str | None:
        """The non-bias input of an Add with a once-used initializer input, else None."""
        if node is None or node.op_type != "Add" or len(node.input) != 2:
            return None
        a, b = node.input
        if b in weights and uses[b] == 1:
            return a
        return b if a in weights and uses[a] == 1 else None

    blocks = []
    for m2 in graph.node:
        if not weight_matmul(m2):
            continue
        chain, frontier, b1 = [], [m2.input[0]], None
        while frontier and len(chain) <= sum(ERF_GELU.values()):
            node = producer.get(frontier.pop())
            if node is None:
                break
            inner = bias_add(node)
            if inner is not None and weight_matmul(producer.get(inner)):
                b1 = node
                continue
            chain.append(node)
            frontier += [
                i
                for i in node.input
                if i not in weights and i in producer and producer[i].op_type != "Constant"
            ]
        if b1 is None or Counter(n.op_type for n in chain) != ERF_GELU:
            continue
        inside = {n.output[0] for n in chain} | {m2.output[0]}  # nodes, keyed by their (SSA) output
        tensors = [b1.output[0], *(o for n in chain for o in n.output)]
        if any(t in outputs or any(c.output[0] not in inside for c in consumers.get(t, [])) for t in tensors):
            continue  # something else reads the block's inner tensors: zeroing would change it
        m1 = producer[bias_add(b1) or ""]
        after = consumers.get(m2.output[0], [])
        out = after[0] if len(after) == 1 and bias_add(after[0]) == m2.output[0] else m2
        blocks.append(FeedForward(m1, b1, m2, out))
    return blocks


def channel_max(
    model: onnx.ModelProto, tensors: list[str], feeds: list[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """max |x| over the last axis's channels of each named tensor, over all feeds."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    peaks: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, x in zip(tensors, session.run(tensors, feed), strict=True):
            peak = np.abs(x).reshape(-1, x.shape[-1]).max(axis=0)  # (channels,)
            peaks[name] = np.maximum(peaks[name], peak) if name in peaks else peak
    return peaks


def _split(
    graph: onnx.GraphProto,
    weights: dict[str, onnx.TensorProto],
    block: FeedForward,
    o: np.ndarray,
    prefix: str,
) -> list[str]:
    """Moves channels `o` of one block to an fp32 side branch; returns the side MatMuls' names."""
    w1_name, b1_name = block.m1.input[1], next(i for i in block.b1.input if i in weights)
    w1 = numpy_helper.to_array(weights[w1_name]).copy()  # (W, I)
    b1 = numpy_helper.to_array(weights[b1_name]).copy()  # (I,)
    w2 = numpy_helper.to_array(weights[block.m2.input[1]])  # (I, W)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.ascontiguousarray(w1[:, o]), f"{prefix}/w1"),  # (W, k)
            numpy_helper.from_array(b1[o], f"{prefix}/b1"),  # (k,)
            numpy_helper.from_array(np.ascontiguousarray(w2[o, :]), f"{prefix}/w2"),  # (k, W)
        ]
    )
    w1[:, o], b1[o] = 0.0, 0.0
    weights[w1_name].CopyFrom(numpy_helper.from_array(w1, w1_name))
    weights[b1_name].CopyFrom(numpy_helper.from_array(b1, b1_name))
    y = block.out.output[0]
    block.out.output[0] = f"{prefix}/main"
    side = [
        helper.make_node(
            "MatMul", [block.m1.input[0], f"{prefix}/w1"], [f"{prefix}/a"], name=f"{prefix}/MatMul"
        ),
        helper.make_node("Add", [f"{prefix}/a", f"{prefix}/b1"], [f"{prefix}/ab"], name=f"{prefix}/Add"),
        helper.make_node(
            "Gelu", [f"{prefix}/ab"], [f"{prefix}/h"], name=f"{prefix}/Gelu", domain="com.microsoft"
        ),
        helper.make_node(
            "MatMul", [f"{prefix}/h", f"{prefix}/w2"], [f"{prefix}/y"], name=f"{prefix}/MatMul_1"
        ),
        helper.make_node("Add", [f"{prefix}/main", f"{prefix}/y"], [y], name=f"{prefix}/merge"),
    ]
    at = list(graph.node).index(block.out) + 1
    for k, node in enumerate(side):
        graph.node.insert(at + k, node)
    return [f"{prefix}/MatMul", f"{prefix}/MatMul_1"]
