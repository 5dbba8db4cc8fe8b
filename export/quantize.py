"""int8 graphs for CPUs: ONNX Runtime dynamic quantisation (weights int8 ahead of time,
activations quantised per batch at run time; no user calibration set needed — the export's own
sentences locate the FFN outlier channels).

- `quantize_graph(source, target, attention, calibration)`: the int8 twin of an fp32 graph; returns what was
  done (recorded in the manifest's provenance). `weights` picks one of `WEIGHTS`; the export uses
  the default, the others are there to be measured against it (bench/export.py).
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
- Weights are int8 per output channel, asymmetric (each channel its own zero point, all 256
  levels used), and the graph asks ONNX Runtime for `session.x64quantprecision` (recorded in the
  manifest's GraphSpec.session_config, applied by every session that loads it). Activations are
  uint8; x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply them with VPMADDUBSW, which sums
  each pair of uint8 x int8 products into a saturating int16: a pair reaches 2·255·128 = 65,280
  and is clipped to 32,767. With the option set, ONNX Runtime converts such weights to uint8 at
  load on those CPUs only and runs a u8u8 kernel that widens before it adds; VNNI, AMX and ARM's
  dot products (int32 accumulators) run the int8 weights as they are. Either way every CPU
  computes the exact integer products. The alternatives (measured in docs/decisions.md §5): 7-bit
  weights (ONNX Runtime's reduce_range) avoid the clipping without the option, but lose a bit of
  every weight and with it accuracy on real captions; uint8 weights are as exact and as accurate
  but lose VNNI's u8s8 kernel everywhere. `runtime/selfcheck.py`
  re-checks the graph on the machine that serves it.
- Only weight MatMul/Gemm (and the fused Attention) are quantised: they carry the transformer and
  projection FLOPs, and ONNX Runtime's integer kernels for them are fast on x86 and ARM.
  Activation-by-activation MatMuls (attention scores and their product with values) stay fp32:
  quantising both operands per batch costs most of the accuracy for little speed. Convolutions
  stay fp32: dynamic ConvInteger is slow on most CPUs and costs EfficientNet's depthwise layers
  much accuracy.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from export.outliers import split_ffn_outliers

QUANTISED_OPS = ["MatMul", "Gemm", "Attention"]


EXACT_ON_X86 = {"session.x64quantprecision": "1"}  # u8u8 on x86 without VNNI, where u8s8 would clip


@dataclass(frozen=True)
class WeightScheme:
    """How an int8 graph stores its weights, in ONNX Runtime's terms, and the session options it
    needs to be computed exactly."""

    weight_type: QuantType
    reduce_range: bool
    range: tuple[int, int]  # the stored integers' bounds
    symmetric: bool = True  # a zero point of 0 per channel (else each channel's own)
    session_config: dict[str, str] = field(default_factory=dict)


WEIGHTS = {  # the schemes bench/export.py compares; the export ships DEFAULT_WEIGHTS
    "s8-8bit-asym": WeightScheme(QuantType.QInt8, False, (-128, 127), False, EXACT_ON_X86),
    "s8-8bit": WeightScheme(QuantType.QInt8, False, (-127, 127), True, EXACT_ON_X86),
    "s8-7bit": WeightScheme(QuantType.QInt8, True, (-64, 64)),  # exact anywhere without options
    "u8-8bit": WeightScheme(QuantType.QUInt8, False, (0, 255), False),  # exact, through a u8u8 kernel
}
DEFAULT_WEIGHTS = "s8-8bit-asym"
# ONNX Runtime's own SkipLayerNormalization kernel measured slower than the Add + LayerNormalization
# it replaces on the fused int8 text graph (docs/decisions.md §5), so the manifest asks the session
# not to make it (GraphSpec.disabled_optimizers).
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
    weights: str = DEFAULT_WEIGHTS,
) -> dict[str, Any]:
    """Writes the int8 graph of `source` to `target`: attention fused first when `attention` is
    given, FFN outlier channels split out on `calibration` feeds when given (export/outliers.py),
    then dynamic quantisation. Returns what was done, for the manifest: {"fused_attention":
    Attention nodes made, "ffn_outlier_channels": per FFN, "disabled_optimizers": for GraphSpec,
    "weights": the scheme, "weight_range": its stored integers' bounds, "session_config": what a
    session must set to compute it exactly (GraphSpec.session_config), "ops": op counts of the int8
    graph}."""
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
        _quantize(current, target, fp32, WEIGHTS[weights])
    finally:
        staged.unlink(missing_ok=True)
        root.setLevel(level)
    graph = onnx.load(str(target), load_external_data=False).graph
    return {
        "fused_attention": fused,
        "ffn_outlier_channels": split,
        "disabled_optimizers": FUSED_GRAPH_DISABLED_OPTIMIZERS if fused else [],
        "weights": weights,
        "weight_range": list(WEIGHTS[weights].range),
        "session_config": dict(WEIGHTS[weights].session_config),
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


def _quantize(source: Path, target: Path, keep_fp32: list[str], scheme: WeightScheme) -> None:
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=scheme.weight_type,
        per_channel=True,
        reduce_range=scheme.reduce_range,
        op_types_to_quantize=QUANTISED_OPS,
        nodes_to_exclude=activation_matmuls(source) + keep_fp32,
        extra_options={
            "DefaultTensorType": onnx.TensorProto.FLOAT,  # com.microsoft outputs lack types
            "WeightSymmetric": scheme.symmetric,
        },
    )
