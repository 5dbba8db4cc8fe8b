"""int8 graphs for CPUs: ONNX Runtime dynamic quantisation (weights int8 ahead of time,
activations quantised per batch at run time; no user calibration set needed — the export's own
sentences locate the FFN outlier channels).

- `quantize_graph(source, target, attention, calibration)`: the int8 twin of an fp32 graph; returns what was
  done (recorded in the manifest's provenance).
- For a BERT text graph (`attention` = its heads and width), ONNX Runtime's transformer optimiser
  first fuses each layer's self-attention into one `Attention` node, which quantises to
  `QAttention`: one int8 GEMM for Q, K and V and a fused softmax instead of ~20 small nodes per
  layer. Only attention is fused offline; LayerNorm, GELU and bias fusions are left to the session's
  own optimiser, whose kernels were faster than the offline contrib ones at batch 32
  (docs/decisions.md §5). The fused graph uses com.microsoft operators, so it is a CPU graph for
  ONNX Runtime only; the fp32 graph the GPU engines build from stays plain ONNX.
- Given calibration inputs, the few outlier channels of each FFN's hidden activation move to a
  small fp32 side branch first (export/outliers.py), so they no longer set the int8 step of the
  whole tensor.
- Only weight MatMul/Gemm (and the fused Attention) are quantised: they carry the transformer and
  projection FLOPs, and ONNX Runtime's integer kernels for them are fast on x86 (VNNI) and ARM.
  Activation-by-activation MatMuls (attention scores and their product with values) stay fp32:
  quantising both operands per batch costs most of the accuracy (min cosine 0.98 on the tiny text
  encoder) for little speed. Convolutions stay fp32: dynamic ConvInteger is slow on most CPUs and
  costs EfficientNet's depthwise layers much accuracy.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from export.outliers import split_ffn_outliers

QUANTISED_OPS = ["MatMul", "Gemm", "Attention"]
# ONNX Runtime's own SkipLayerNormalization kernel ran 1.6x slower than the Add + LayerNormalization
# it replaces on the fused int8 text graph (2 cores, batch 32): 15.6 ms of a 72 ms call. The
# manifest asks the session not to make it (GraphSpec.disabled_optimizers).
FUSED_GRAPH_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


@dataclass(frozen=True)
class AttentionShape:
    """What ONNX Runtime's BERT fusion needs to recognise a text graph's self-attention."""

    heads: int
    width: int  # hidden size
    layers: int  # how many Attention nodes a complete fusion yields


def quantize_graph(
    source: Path,
    target: Path,
    attention: AttentionShape | None = None,
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Writes the int8 graph of `source` to `target`: attention fused first when `attention` is
    given, FFN outlier channels split out on `calibration` feeds when given (export/outliers.py),
    then dynamic quantisation. Returns what was done, for the manifest: {"fused_attention":
    Attention nodes made, "ffn_outlier_channels": per FFN, "disabled_optimizers": for GraphSpec,
    "ops": op counts of the int8 graph}."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the optimiser and quantize_dynamic advise on the root logger
    staged = target.with_name(target.name + ".staged")  # the rewritten fp32 graph, removed below
    try:
        fused = _fuse_attention(source, staged, attention) if attention is not None else 0
        current = staged if fused else source
        split, fp32 = [], []
        if calibration:
            model = onnx.load(str(current))
            split, fp32 = split_ffn_outliers(model, calibration)
            if fp32:  # something was rewritten
                onnx.save(model, str(staged))
                current = staged
        _quantize(current, target, keep_fp32=fp32)
    finally:
        staged.unlink(missing_ok=True)
        root.setLevel(level)
    graph = onnx.load(str(target), load_external_data=False).graph
    return {
        "fused_attention": fused,
        "ffn_outlier_channels": split,
        "disabled_optimizers": FUSED_GRAPH_DISABLED_OPTIMIZERS if fused else [],
        "ops": dict(sorted(Counter(n.op_type for n in graph.node).items())),
    }


def activation_matmuls(path: Path) -> list[str]:
    """Names of MatMul nodes neither of whose inputs is a weight (initializer or constant)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    weights |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not any(i in weights for i in n.input)]


def _fuse_attention(source: Path, target: Path, shape: AttentionShape) -> int:
    """Fuses self-attention only; returns the Attention nodes made (0: nothing written, all or none)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    for name in (
        "enable_gelu",
        "enable_layer_norm",
        "enable_skip_layer_norm",
        "enable_bias_skip_layer_norm",
        "enable_bias_gelu",
        "enable_embed_layer_norm",
    ):
        setattr(options, name, False)
    model = optimize_model(
        str(source),
        model_type="bert",
        num_heads=shape.heads,
        hidden_size=shape.width,
        opt_level=0,
        optimization_options=options,
    )
    fused = sum(1 for n in model.model.graph.node if n.op_type == "Attention")
    if fused != shape.layers:  # a partial match would quantise some layers one way, some another
        return 0
    model.save_model_to_file(str(target))
    return fused


def _quantize(source: Path, target: Path, keep_fp32: list[str]) -> None:
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=QUANTISED_OPS,
        nodes_to_exclude=activation_matmuls(source) + keep_fp32,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # com.microsoft outputs lack types
    )
