"""ONNX graphs of the two encoders, with preprocessing inside (docs/architecture.md §3).

- `ImageGraph`: uint8 NHWC RGB pixels [B, S, S, 3] -> (embedding [B, d], code_scores [B, K]); the
  cast, the /255 scaling, the mean/std normalisation and the NHWC -> NCHW transpose are graph ops,
  so the runtime does no float work per pixel.
- `TextGraph`: input_ids, attention_mask int64 [B, L] -> (embedding, code_scores).
- `export_graph`: torch.onnx's TorchScript-based exporter (`dynamo=False`: one self-contained file,
  no .onnx.data side file), dynamic batch (and sequence) axes, then `onnx.checker` full check.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from torch import nn

from runtime.bundle import TensorSpec
from train.model import DualEncoder

EXPORTER = "torch.onnx.export (TorchScript-based, dynamo=False)"


class ImageGraph(nn.Module):
    def __init__(self, model: DualEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = pixels.permute(0, 3, 1, 2).to(torch.float32) / 255.0  # (B, 3, S, S) in [0, 1]
        embedding = self.model.encode_image(x).global_  # (B, d); normalisation happens inside
        return embedding, self.model.code_scores(embedding)  # (B, d), (B, K)


class TextGraph(nn.Module):
    def __init__(self, model: DualEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.model.encode_text(input_ids, attention_mask).global_  # (B, d)
        return embedding, self.model.code_scores(embedding)  # (B, d), (B, K)


def image_specs(model: DualEncoder) -> tuple[list[TensorSpec], list[TensorSpec]]:
    s, d, k = model.cfg.image.image_size, model.cfg.embed_dim, model.cfg.codebook_size
    return (
        [TensorSpec("pixels", "uint8", ["batch", s, s, 3])],
        [
            TensorSpec("embedding", "float32", ["batch", d]),
            TensorSpec("code_scores", "float32", ["batch", k]),
        ],
    )


def text_specs(model: DualEncoder) -> tuple[list[TensorSpec], list[TensorSpec]]:
    d, k = model.cfg.embed_dim, model.cfg.codebook_size
    return (
        [
            TensorSpec("input_ids", "int64", ["batch", "sequence"]),
            TensorSpec("attention_mask", "int64", ["batch", "sequence"]),
        ],
        [
            TensorSpec("embedding", "float32", ["batch", d]),
            TensorSpec("code_scores", "float32", ["batch", k]),
        ],
    )


def export_graph(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    path: Path,
    opset: int,
) -> None:
    """Exports `module` with the dynamic axes named in the specs and checks the file fully."""
    dynamic = {
        spec.name: {i: axis for i, axis in enumerate(spec.shape) if isinstance(axis, str)}
        for spec in [*inputs, *outputs]
    }
    module.eval()
    with torch.no_grad():
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(path), full_check=True)
