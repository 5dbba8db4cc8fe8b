"""Tessera runtime: the lean embedding server, gRPC and HTTP (docs/architecture.md §4-5; its
layers and their modules are the table of §5).

Depends only on numpy, pillow, tokenizers, grpcio, protobuf and an inference engine (ONNX Runtime
or TensorRT) — never on torch, `train` or `export` (tests/runtime/test_boundary.py). Python 3.10
syntax, for JetPack.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("tessera-embed")
except _metadata.PackageNotFoundError:  # run from a checkout without installing
    __version__ = "0.0.0+checkout"
