"""int8 graphs for CPUs: ONNX Runtime dynamic quantisation (weights int8 ahead of time,
activations quantised per batch at run time; no calibration set needed).

Only MatMul/Gemm with a weight operand are quantised: they carry the transformer and projection
FLOPs, and ONNX Runtime's integer kernels for them are fast on x86 and ARM. Activation-by-
activation MatMuls (attention scores and their product with values) stay fp32: quantising both
operands per batch costs most of the accuracy (min cosine 0.98 on the tiny text encoder) for
little speed. Convolutions stay fp32: dynamic ConvInteger is slow on most CPUs and costs
EfficientNet's depthwise layers much accuracy.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

QUANTISED_OPS = ["MatMul", "Gemm"]


def quantize_graph(source: Path, target: Path) -> None:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic advises "pre-processing" on the root logger
    try:
        _quantize(source, target)
    finally:
        root.setLevel(level)


def activation_matmuls(path: Path) -> list[str]:
    """Names of MatMul nodes neither of whose inputs is a weight (initializer or constant)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    weights |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not any(i in weights for i in n.input)]


def _quantize(source: Path, target: Path) -> None:
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=QUANTISED_OPS,
        nodes_to_exclude=activation_matmuls(source),
    )
