"""Tessera export: checkpoint -> self-describing bundle (ONNX, codebook, tokenizer, manifest).

Imports `train` and `runtime.bundle`; `tensorrt` lazily. (Built by the Export issue.)
"""
