"""int8 graphs for CPUs: ONNX Runtime dynamic quantisation (weights int8 ahead of time,
activations quantised per batch at run time; no calibration set needed).

Only MatMul/Gemm are quantised: they carry the transformer and projection FLOPs, and ONNX
Runtime's integer kernels for them are fast on x86 and ARM. Convolutions stay fp32: dynamic
ConvInteger is slow on most CPUs and costs EfficientNet's depthwise layers much accuracy.
"""

from __future__ import annotations

import logging
from pathlib import Path

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


def _quantize(source: Path, target: Path) -> None:
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=QUANTISED_OPS,
    )
