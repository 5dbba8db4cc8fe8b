"""Tessera export: checkpoint -> self-describing bundle (ONNX, codebook, tokenizer, manifest).

The bundle contract it writes: docs/architecture.md §3. Imports `train` and `runtime.bundle`;
`tensorrt` lazily.
"""
